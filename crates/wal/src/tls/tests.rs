#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

type Accepted = Result<(tokio_rustls::server::TlsStream<TcpStream>, String), TlsError>;

/// Accepts one connection on a loopback port with `config`.
async fn serve_once(config: Arc<ServerConfig>) -> (String, JoinHandle<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, config, TIMEOUT).await
    });
    (addr.to_string(), handle)
}

fn primary(ca: &ReplicationCa) -> Arc<ServerConfig> {
    server_config(&ca.cert_pem, &ca.issue_server_cert().unwrap()).unwrap()
}

/// A client config outside the policy of [`client_config`], to play a misbehaving peer.
fn raw_client(
    ca: &ReplicationCa,
    version: &'static rustls::SupportedProtocolVersion,
    cert: Option<&CertPair>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(root_store(&ca.cert_pem).unwrap());
    let mut config = match cert {
        Some(pair) => builder
            .with_client_auth_cert(
                cert_chain("test", &pair.cert_pem).unwrap(),
                private_key("test", &pair.key_pem).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A handshake of a client with `config` against a primary of `ca`: the client's end, and the
/// server's task.
async fn handshake(
    ca: &ReplicationCa,
    config: Arc<ClientConfig>,
) -> (
    Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
    JoinHandle<Accepted>,
) {
    let (addr, server) = serve_once(primary(ca)).await;
    (connect(&addr, config, TIMEOUT).await, server)
}

/// A handshake of a misbehaving client ([`raw_client`]), with a valid client certificate of
/// `secondary-1` when `with_cert`.
async fn raw_handshake(
    with_cert: bool,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> (
    Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
    JoinHandle<Accepted>,
) {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let pair = with_cert.then(|| ca.issue_client_cert("secondary-1", HOUR).unwrap());
    handshake(&ca, raw_client(&ca, version, pair.as_ref(), alpn)).await
}

/// Asserts that the server refused the handshake.
async fn assert_server_refused(server: JoinHandle<Accepted>, reason: &str) {
    match server.await.unwrap() {
        Err(TlsError::Handshake { source, .. }) => {
            assert!(
                source.to_string().contains(reason),
                "server error: {source}"
            )
        }
        Err(other) => panic!("unexpected server error: {other}"),
        Ok((_, cn)) => panic!("server accepted peer {cn}"),
    }
}

/// Asserts that the client learnt of the refusal: either the handshake failed, or (TLS 1.3
/// verifies the client certificate after the client finished) its first read gets an alert.
async fn assert_client_refused(
    client: Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
    alert: &str,
) {
    match client {
        Err(TlsError::Handshake { source, .. }) => {
            assert!(source.to_string().contains(alert), "client error: {source}")
        }
        Err(other) => panic!("unexpected client error: {other}"),
        Ok(mut stream) => {
            let mut buf = [0u8; 1];
            let err = stream.read(&mut buf).await.unwrap_err();
            assert!(err.to_string().contains(alert), "client read error: {err}");
        }
    }
}

#[tokio::test]
async fn mutual_handshake_carries_data_and_server_sees_client_cn() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let (addr, server) = serve_once(primary(&ca)).await;
    let client_pair = ca.issue_client_cert("secondary-1", HOUR).unwrap();
    let mut client = connect(
        &addr,
        client_config(&ca.cert_pem, &client_pair).unwrap(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let (mut served, cn) = server.await.unwrap().unwrap();
    assert_eq!(cn, "secondary-1");
    assert_eq!(served.get_ref().1.alpn_protocol(), Some(ALPN_DR));
    assert_eq!(
        served.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    served.write_all(b"pong").await.unwrap();
    served.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    client.shutdown().await.unwrap();
    assert_eq!(served.read(&mut buf).await.unwrap(), 0, "clean close");
    served.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let other = ReplicationCa::generate("cluster-b").unwrap();
    // Trusts the right CA but presents a certificate from the other one.
    let config = client_config(
        &ca.cert_pem,
        &other.issue_client_cert("secondary-1", HOUR).unwrap(),
    )
    .unwrap();
    let (client, server) = handshake(&ca, config).await;
    assert_server_refused(server, "UnknownIssuer").await;
    assert_client_refused(client, "UnknownCA").await;
}

#[tokio::test]
async fn client_without_cert_is_refused() {
    let (client, server) = raw_handshake(false, &rustls::version::TLS13, &[ALPN_DR]).await;
    assert_server_refused(server, "no certificates").await;
    assert_client_refused(client, "CertificateRequired").await;
}

#[tokio::test]
async fn server_cert_cannot_be_used_as_client_cert() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let server_pair = ca.issue_server_cert().unwrap();
    let config = client_config(&ca.cert_pem, &server_pair).unwrap();
    let (client, server) = handshake(&ca, config).await;
    assert_server_refused(server, "extended key usage for client authentication").await;
    assert_client_refused(client, "alert").await;
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let (client, server) = raw_handshake(true, &rustls::version::TLS12, &[ALPN_DR]).await;
    assert_server_refused(server, "").await;
    match client {
        Err(TlsError::Handshake { source, .. }) => {
            assert!(source.to_string().contains("ProtocolVersion"), "{source}")
        }
        other => panic!("TLS 1.2 client got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    let (client, server) = raw_handshake(true, &rustls::version::TLS13, &[b"h2"]).await;
    assert_server_refused(server, "support any known protocol").await;
    assert_client_refused(client, "NoApplicationProtocol").await;
}

#[tokio::test]
async fn missing_alpn_is_refused_on_both_sides() {
    let (client, server) = raw_handshake(true, &rustls::version::TLS13, &[]).await;
    match client {
        Err(TlsError::Alpn { negotiated, .. }) => assert_eq!(negotiated, None),
        other => panic!("client without ALPN got {other:?}"),
    }
    match server.await.unwrap() {
        Err(TlsError::Alpn { negotiated, .. }) => assert_eq!(negotiated, None),
        Err(other) => panic!("unexpected server error: {other}"),
        Ok((_, cn)) => panic!("server accepted {cn} without ALPN"),
    }
}

#[tokio::test]
async fn client_refuses_server_from_another_ca() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let other = ReplicationCa::generate("cluster-b").unwrap();
    // The impostor trusts our client certificates but serves a certificate of another CA.
    let impostor = server_config(&ca.cert_pem, &other.issue_server_cert().unwrap()).unwrap();
    let (addr, server) = serve_once(impostor).await;
    let pair = ca.issue_client_cert("secondary-1", HOUR).unwrap();
    let client = connect(&addr, client_config(&ca.cert_pem, &pair).unwrap(), TIMEOUT).await;
    match client {
        Err(TlsError::Handshake { source, .. }) => {
            assert!(source.to_string().contains("UnknownIssuer"), "{source}")
        }
        other => panic!("client accepted an impostor: {other:?}"),
    }
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn handshake_times_out_against_a_silent_peer() {
    // A listener that never answers: TCP connects (backlog) but no ServerHello comes.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let pair = ca.issue_client_cert("secondary-1", HOUR).unwrap();
    let config = client_config(&ca.cert_pem, &pair).unwrap();
    let err = connect(&addr, config, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Timeout {
                stage: "TLS handshake",
                ..
            }
        ),
        "{err}"
    );

    // And the server side: a TCP client that never sends a ClientHello.
    let (addr, server) = serve_once_with_timeout(primary(&ca), Duration::from_millis(200)).await;
    let _mute = TcpStream::connect(&addr).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Timeout {
                stage: "TLS handshake",
                ..
            }
        ),
        "{err}"
    );
}

async fn serve_once_with_timeout(
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> (String, JoinHandle<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, config, timeout).await
    });
    (addr, handle)
}

#[tokio::test]
async fn ca_round_trips_through_pem_and_serde() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let reloaded = ReplicationCa::from_pem(&ca.cert_pem, ca.key_pem()).unwrap();
    assert_eq!(reloaded.cert_pem, ca.cert_pem);
    assert_eq!(reloaded.key_pem(), ca.key_pem());

    let json = serde_json::to_string(&ca).unwrap();
    let from_json: ReplicationCa = serde_json::from_str(&json).unwrap();
    assert_eq!(from_json.key_pem(), ca.key_pem());

    // Certificates issued by the reloaded CA are trusted by configs built from the original.
    let (addr, server) = serve_once(primary(&ca)).await;
    let pair = from_json.issue_client_cert("secondary-2", HOUR).unwrap();
    let mut client = connect(&addr, client_config(&ca.cert_pem, &pair).unwrap(), TIMEOUT)
        .await
        .unwrap();
    let (mut served, cn) = server.await.unwrap().unwrap();
    assert_eq!(cn, "secondary-2");
    client.shutdown().await.unwrap();
    served.shutdown().await.unwrap();
}

#[test]
fn from_pem_rejects_foreign_key_and_garbage() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let other = ReplicationCa::generate("cluster-b").unwrap();
    assert!(matches!(
        ReplicationCa::from_pem(&ca.cert_pem, other.key_pem()),
        Err(TlsError::CaKeyMismatch)
    ));
    assert!(matches!(
        ReplicationCa::from_pem("not a pem", ca.key_pem()),
        Err(TlsError::InvalidPem { .. })
    ));
    assert!(matches!(
        ReplicationCa::from_pem(&ca.cert_pem, "not a key"),
        Err(TlsError::InvalidPem { .. })
    ));
    let two = format!("{}{}", ca.cert_pem, other.cert_pem);
    assert!(matches!(
        ReplicationCa::from_pem(&two, ca.key_pem()),
        Err(TlsError::InvalidPem { .. })
    ));
    let stored = serde_json::json!({ "cert_pem": ca.cert_pem, "key_pem": other.key_pem() });
    assert!(serde_json::from_value::<ReplicationCa>(stored).is_err());
}

#[test]
fn certificates_carry_the_expected_names() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let ca_der = cert_chain("ca", &ca.cert_pem).unwrap();
    assert_eq!(
        peer_common_name(&ca_der).as_deref(),
        Some("bunker-dr-ca cluster-a")
    );
    let client = ca.issue_client_cert("dr-east", HOUR).unwrap();
    let client_der = cert_chain("client", &client.cert_pem).unwrap();
    assert_eq!(peer_common_name(&client_der).as_deref(), Some("dr-east"));
    let server = ca.issue_server_cert().unwrap();
    let server_der = cert_chain("server", &server.cert_pem).unwrap();
    assert_eq!(peer_common_name(&server_der).as_deref(), Some(SERVER_NAME));
    assert_eq!(peer_common_name(&[]), None);
    assert_eq!(
        peer_common_name(&[CertificateDer::from(vec![0x30, 0x00])]),
        None
    );
}

#[test]
fn ids_are_validated() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    for bad in ["", "line\nbreak", &"x".repeat(MAX_ID_LEN + 1)] {
        assert!(
            matches!(
                ca.issue_client_cert(bad, HOUR),
                Err(TlsError::InvalidId { .. })
            ),
            "{bad:?}"
        );
        assert!(matches!(
            ReplicationCa::generate(bad),
            Err(TlsError::InvalidId { .. })
        ));
    }
    assert!(ca.issue_client_cert(&"x".repeat(MAX_ID_LEN), HOUR).is_ok());
}

#[test]
fn debug_never_prints_private_keys() {
    let ca = ReplicationCa::generate("cluster-a").unwrap();
    let pair = ca.issue_client_cert("secondary-1", HOUR).unwrap();
    for printed in [format!("{ca:?}"), format!("{pair:?}")] {
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
    }
    // The PEM really is a key, so the assertion above can fail.
    assert!(pair.key_pem.contains("PRIVATE KEY"));
}

#[test]
fn certificates_are_short_lived_and_renewed_at_half_life() {
    let ca = ReplicationCa::generate("cluster-1").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The activation certificate lives as long as it was asked to (plus the clock skew).
    let initial = ca.issue_client_cert("s1", HOUR).unwrap();
    let (nb, na) = validity_unix(&initial.cert_pem).unwrap();
    assert!((na - now - 3600).abs() <= 5, "{na} vs {now}");
    assert!(nb <= now - 4 * 60);
    // The server certificate: LEAF_VALIDITY_DAYS.
    let server = ca.issue_server_cert().unwrap();
    let (_, na) = validity_unix(&server.cert_pem).unwrap();
    assert!((na - now - LEAF_VALIDITY_DAYS * 86_400).abs() <= 5);
    assert!(!renewal_due(validity_unix(&server.cert_pem).unwrap(), now));
    assert!(renewal_due(
        validity_unix(&server.cert_pem).unwrap(),
        now + LEAF_VALIDITY_DAYS * 86_400 / 2 + 1
    ));

    // Renewal signs the secondary's own public key; the key never reaches the primary.
    let (key_pem, public_key) = new_client_key().unwrap();
    let renewed = ca.renew_client_cert("s1", &public_key).unwrap();
    assert!(cert_matches_key(&renewed, &key_pem).unwrap());
    assert!(!cert_matches_key(&renewed, &initial.key_pem).unwrap());
    let (_, na) = validity_unix(&renewed).unwrap();
    assert!((na - now - LEAF_VALIDITY_DAYS * 86_400).abs() <= 5);
    // It works as a client certificate of the cluster.
    let pair = CertPair {
        cert_pem: renewed,
        key_pem,
    };
    client_config(&ca.cert_pem, &pair).unwrap();

    // Garbage and foreign key types are refused.
    assert!(ca.renew_client_cert("s1", b"not a key").is_err());
    assert!(ca.renew_client_cert("bad id\n", &public_key).is_err());
}

/// The cluster port's demultiplexing: the ClientHello read first, then the handshake finished
/// with the config of the protocol it asked for.
async fn serve_once_started(
    forwarding: Arc<ServerConfig>,
) -> (String, JoinHandle<Result<(bool, String), TlsError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let start = client_hello(tcp, TIMEOUT).await?;
        let asked = offers_alpn(&start, ALPN_FORWARD);
        let (_, cn) =
            accept_started(start, &peer.to_string(), forwarding, ALPN_FORWARD, TIMEOUT).await?;
        Ok((asked, cn))
    });
    (addr.to_string(), handle)
}

#[tokio::test]
async fn forwarding_needs_a_client_certificate_of_its_own_ca() {
    let ca = ReplicationCa::generate("forwarding").unwrap();
    let server = server_config_for(&primary(&ca), ALPN_FORWARD);
    let standby = ca.issue_client_cert("standby", HOUR).unwrap();

    // A standby with the advertised client certificate.
    let (addr, accepted) = serve_once_started(server.clone()).await;
    let client = client_config_for(
        &client_config(&ca.cert_pem, &standby).unwrap(),
        ALPN_FORWARD,
    );
    let mut stream = connect_for(&addr, client, ALPN_FORWARD, TIMEOUT)
        .await
        .unwrap();
    let (asked, cn) = accepted.await.unwrap().unwrap();
    assert!(asked);
    assert_eq!(cn, "standby");
    stream.shutdown().await.unwrap();

    // No client certificate, or one of another CA (say, the previous active node's): refused.
    let other = ReplicationCa::generate("forwarding").unwrap();
    let foreign = other.issue_client_cert("standby", HOUR).unwrap();
    for cert in [None, Some(&foreign)] {
        let (addr, accepted) = serve_once_started(server.clone()).await;
        let config = raw_client(&ca, &rustls::version::TLS13, cert, &[ALPN_FORWARD]);
        let client = connect_for(&addr, config, ALPN_FORWARD, TIMEOUT).await;
        assert!(
            accepted.await.unwrap().is_err(),
            "accepted {:?}",
            cert.is_some()
        );
        if let Ok(mut stream) = client {
            let mut buf = [0u8; 1];
            assert!(stream.read(&mut buf).await.is_err());
        }
    }

    // A DR client (ALPN bunker-dr/1) cannot be answered by the forwarding config.
    let (addr, accepted) = serve_once_started(server).await;
    let dr = client_config(&ca.cert_pem, &standby).unwrap();
    assert!(connect_for(&addr, dr, ALPN_DR, TIMEOUT).await.is_err());
    assert!(accepted.await.unwrap().is_err());
}
