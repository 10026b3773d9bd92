//! Key-share ceremonies on a DR secondary: promotion with the primary's unseal keys, and
//! generation of a DR operation token (the generate-root flow, OTP-encoded).

use std::sync::Mutex;

use bunker_seal::KeyCeremony;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Length of generated DR operation tokens (`hvs.` + 24) and so of their OTP.
pub(crate) const OTP_LENGTH: usize = 28;

pub(crate) struct OpTokenGeneration {
    pub ceremony: KeyCeremony,
    pub otp: Zeroizing<String>,
    pub encoded: String,
}

impl OpTokenGeneration {
    pub fn status(&self, otp_shown: &str) -> Value {
        json!({
            "started": true,
            "nonce": self.ceremony.nonce(),
            "progress": self.ceremony.progress(),
            "required": self.ceremony.required,
            "complete": !self.encoded.is_empty(),
            "encoded_token": self.encoded,
            "encoded_root_token": self.encoded,
            "otp": otp_shown,
            "otp_length": OTP_LENGTH,
            "pgp_fingerprint": "",
        })
    }
}

pub(crate) fn idle_status(required: u8) -> Value {
    json!({
        "started": false,
        "nonce": "",
        "progress": 0,
        "required": required,
        "complete": false,
        "encoded_token": "",
        "encoded_root_token": "",
        "otp": "",
        "otp_length": OTP_LENGTH,
        "pgp_fingerprint": "",
    })
}

#[derive(Default)]
pub(crate) struct Ceremonies {
    pub promote: Mutex<Option<KeyCeremony>>,
    pub op_token: Mutex<Option<OpTokenGeneration>>,
}
