//! Just enough DER to read two fields of an X.509 certificate: the subject common name (the
//! identity of a replication peer) and the subject public key (to check that a stored CA key
//! belongs to its certificate).
//!
//! Why not `x509-parser`: rcgen 0.14 depends on x509-parser 0.18 but does not re-export it, and
//! the workspace pins 0.17, so depending on it would compile a second copy of the parser and its
//! ASN.1 stack for two fields. The walk below only follows the fixed prefix of `TBSCertificate`
//! (RFC 5280 §4.1) and never panics: every length is checked with `split_at_checked`. It runs
//! on certificates that webpki has already verified against the replication CA.

/// ASN.1 universal tags used below.
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_IA5_STRING: u8 = 0x16;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
/// `[0] EXPLICIT Version` in `TBSCertificate`.
const TAG_VERSION: u8 = 0xa0;
/// OID 2.5.4.3 (id-at-commonName), content octets only.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One tag-length-value element.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

/// Reads one element, returning it and the bytes after it.
fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        // High tag numbers never occur in the fields walked here.
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            // Indefinite lengths are not DER; more than 4 length bytes is not a certificate.
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(count)?;
        let len = len_bytes.iter().try_fold(0usize, |acc, &b| {
            acc.checked_mul(256)?.checked_add(usize::from(b))
        })?;
        (len, rest)
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((Tlv { tag, value }, rest))
}

/// Reads one element that must carry `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (tlv, rest) = read_tlv(input)?;
    (tlv.tag == tag).then_some((tlv.value, rest))
}

/// The two fields of a certificate that the replication PKI reads.
pub(crate) struct CertFields<'a> {
    /// Contents of the subject `Name` SEQUENCE.
    subject: &'a [u8],
    /// The subjectPublicKey BIT STRING contents without the unused-bits byte.
    pub(crate) public_key: &'a [u8],
}

impl<'a> CertFields<'a> {
    /// Walks `Certificate → TBSCertificate` up to the subject public key.
    pub(crate) fn parse(der: &'a [u8]) -> Option<Self> {
        let (cert, trailing) = expect(der, TAG_SEQUENCE)?;
        if !trailing.is_empty() {
            return None;
        }
        let (tbs, _) = expect(cert, TAG_SEQUENCE)?;
        let rest = match tbs.first() {
            Some(&TAG_VERSION) => read_tlv(tbs)?.1,
            _ => tbs,
        };
        let (_serial, rest) = expect(rest, TAG_INTEGER)?;
        let (_signature_alg, rest) = expect(rest, TAG_SEQUENCE)?;
        let (_issuer, rest) = expect(rest, TAG_SEQUENCE)?;
        let (_validity, rest) = expect(rest, TAG_SEQUENCE)?;
        let (subject, rest) = expect(rest, TAG_SEQUENCE)?;
        let (spki, _) = expect(rest, TAG_SEQUENCE)?;
        let (_key_alg, spki_rest) = expect(spki, TAG_SEQUENCE)?;
        let (bits, _) = expect(spki_rest, TAG_BIT_STRING)?;
        let (&unused_bits, public_key) = bits.split_first()?;
        if unused_bits != 0 {
            return None;
        }
        Some(Self {
            subject,
            public_key,
        })
    }

    /// The subject common name, if there is exactly one and it is a UTF-8 compatible string.
    ///
    /// Several CNs are refused rather than picking one: the CN is an identity, and an
    /// ambiguous identity is no identity.
    pub(crate) fn common_name(&self) -> Option<String> {
        let mut found: Option<String> = None;
        let mut rdns = self.subject;
        while !rdns.is_empty() {
            let (rdn, rest) = expect(rdns, TAG_SET)?;
            rdns = rest;
            let mut attributes = rdn;
            while !attributes.is_empty() {
                let (attribute, rest) = expect(attributes, TAG_SEQUENCE)?;
                attributes = rest;
                let (oid, value) = expect(attribute, TAG_OID)?;
                if oid != OID_COMMON_NAME {
                    continue;
                }
                if found.is_some() {
                    return None;
                }
                found = Some(decode_string(value)?);
            }
        }
        found
    }
}

/// Decodes a DirectoryString holding text that is valid UTF-8 as encoded.
fn decode_string(input: &[u8]) -> Option<String> {
    let (tlv, trailing) = read_tlv(input)?;
    if !trailing.is_empty() {
        return None;
    }
    match tlv.tag {
        TAG_UTF8_STRING | TAG_PRINTABLE_STRING | TAG_IA5_STRING => {
            String::from_utf8(tlv.value.to_vec()).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A self-signed certificate of organisation "Bunker" with common name `cn` (or none),
    /// and its public key.
    fn cert_with(cn: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Bunker");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let cert = params.self_signed(&key).unwrap();
        (
            cert.der().to_vec(),
            rcgen::PublicKeyData::der_bytes(&key).to_vec(),
        )
    }

    #[test]
    fn reads_common_name_and_public_key() {
        let (der, public_key) = cert_with(Some("secondary-ä-1"));
        let fields = CertFields::parse(&der).unwrap();
        assert_eq!(fields.common_name().as_deref(), Some("secondary-ä-1"));
        assert_eq!(fields.public_key, public_key.as_slice());
    }

    #[test]
    fn subject_without_common_name_is_none() {
        let (der, _) = cert_with(None);
        let fields = CertFields::parse(&der).unwrap();
        assert_eq!(fields.common_name(), None);
    }

    #[test]
    fn every_truncation_and_garbage_is_rejected_without_panic() {
        let (der, _) = cert_with(Some("node-1"));
        for len in 0..der.len() {
            let truncated = &der[..len];
            assert!(CertFields::parse(truncated).is_none(), "prefix {len}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(CertFields::parse(&trailing).is_none());
        // Flip every byte in turn: parsing may succeed or fail but must not panic.
        for i in 0..der.len() {
            let mut corrupted = der.clone();
            corrupted[i] ^= 0xff;
            if let Some(fields) = CertFields::parse(&corrupted) {
                let _ = fields.common_name();
            }
        }
    }

    #[test]
    fn long_form_lengths() {
        // A SEQUENCE whose 300-byte length needs the two-byte long form.
        let mut input = vec![TAG_SEQUENCE, 0x82, 0x01, 0x2c];
        input.extend(std::iter::repeat_n(0u8, 300));
        let (value, rest) = expect(&input, TAG_SEQUENCE).unwrap();
        assert_eq!(value.len(), 300);
        assert!(rest.is_empty());
        // Indefinite length and oversize length-of-length are refused.
        assert!(read_tlv(&[TAG_SEQUENCE, 0x80, 0, 0]).is_none());
        assert!(read_tlv(&[TAG_SEQUENCE, 0x85, 1, 0, 0, 0, 0]).is_none());
    }
}
