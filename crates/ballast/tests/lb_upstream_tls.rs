//! TLS to backends against a real TLS server: HAProxy terminates TLS in front of an echo backend,
//! requires a client certificate from a test CA (mutual TLS) and says which HTTP version reached
//! it. The LB's pools verify HAProxy's certificate against the CA for `server_name`, present the
//! client certificate, and speak HTTP/1.1 (`tls`), HTTP/2 (`h2`) or what ALPN agrees (`auto`);
//! a wrong name, a missing client certificate or an unknown CA fail the request, and
//! `insecure_skip_verify` alone lets a wrong name through.

mod support;

use std::path::Path;

use ballast_testkit::haproxy;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::{Process, Reply, TempDir, backend_of, echo, get};

/// A test CA, HAProxy's certificate for `backend.test` and the LB's client certificate, written
/// to `dir` (`ca.pem`, `server.pem` with its key, `client.pem`, `client.key`); and a second CA
/// that signed nothing, as `other-ca.pem`.
fn certificates(dir: &Path) {
    let authority = |name: &str| {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
    };
    let ca = authority("Ballast test CA");
    let other = authority("Another CA");
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(vec!["backend.test".into()]);
    let (client, client_key) = leaf(vec!["lb.test".into()]);
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
    write("ca.pem", &ca.pem());
    write("other-ca.pem", &other.pem());
    write("server.pem", &format!("{server}{server_key}"));
    write("client.pem", &client);
    write("client.key", &client_key);
}

/// The HTTP major version HAProxy says the LB's request came in (its `X-Via-Http` header).
fn via(reply: &Reply) -> String {
    reply
        .head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-via-http")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no x-via-http in {}", reply.head))
}

#[test]
fn pools_speak_tls_http1_h2_and_auto_to_a_backend_that_requires_a_client_certificate() {
    let dir = TempDir::new("upstream-tls");
    certificates(dir.path());
    let (_echo, echo_address) = echo("b1", &[]);
    let d = dir.path().display();
    let haproxy = haproxy::Server::start(
        &format!(
            "frontend tls_both\n  mode http\n  \
             bind 127.0.0.1:{{PORT0}} ssl crt {d}/server.pem ca-file {d}/ca.pem verify required alpn h2,http/1.1\n  \
             http-after-response set-header x-via-http %[fc_http_major]\n  \
             default_backend echo\n\
             frontend tls_http1\n  mode http\n  \
             bind 127.0.0.1:{{PORT1}} ssl crt {d}/server.pem ca-file {d}/ca.pem verify required alpn http/1.1\n  \
             http-after-response set-header x-via-http %[fc_http_major]\n  \
             default_backend echo\n\
             backend echo\n  mode http\n  server e {echo_address}\n"
        ),
        2,
    );
    let both = format!("127.0.0.1:{}", haproxy.ports[0]);
    let http1_only = format!("127.0.0.1:{}", haproxy.ports[1]);

    // The TLS fields of a pool: `ca` (a file in `dir`, or none: insecure_skip_verify), the
    // name to check, and whether it presents the client certificate.
    let tls = |ca: Option<&str>, name: &str, client: bool| {
        let mut fields = match ca {
            Some(ca) => format!("tls = true\nca_file = \"{d}/{ca}\"\n"),
            None => "tls = true\ninsecure_skip_verify = true\n".to_owned(),
        };
        fields.push_str(&format!("server_name = \"{name}\"\n"));
        if client {
            fields.push_str(&format!(
                "client_cert = \"{d}/client.pem\"\nclient_key = \"{d}/client.key\"\n"
            ));
        }
        fields
    };
    let good = tls(Some("ca.pem"), "backend.test", true);
    let pools = [
        ("tls", &both, good.clone()),
        ("h2", &both, format!("protocol = \"h2\"\n{good}")),
        ("auto-h2", &both, format!("protocol = \"auto\"\n{good}")),
        (
            "auto-http1",
            &http1_only,
            format!("protocol = \"auto\"\n{good}"),
        ),
        ("wrong-name", &both, tls(Some("ca.pem"), "other.test", true)),
        (
            "other-ca",
            &both,
            tls(Some("other-ca.pem"), "backend.test", true),
        ),
        (
            "no-client-cert",
            &both,
            tls(Some("ca.pem"), "backend.test", false),
        ),
        ("insecure", &both, tls(None, "other.test", true)),
        // A TCP listener originates TLS: its clients speak clear text.
        ("tcp", &http1_only, good.clone()),
    ];
    let mut config = String::from("admin = \"127.0.0.1:0\"\nworkers = 1\nretries = 0\n");
    for (name, _, _) in &pools {
        config.push_str(&format!(
            "\n[[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"{name}\"\n{}",
            if *name == "tcp" {
                "mode = \"tcp\"\n"
            } else {
                ""
            }
        ));
    }
    for (name, backend, fields) in &pools {
        config.push_str(&format!(
            "\n[[pools]]\nname = \"{name}\"\n{fields}backends = [\"{backend}\"]\n"
        ));
    }
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, config).expect("write the configuration");
    let lb = Process::start(
        &["lb", "--config", path.to_str().expect("utf-8")],
        pools.len() + 1,
    );
    let listener = |name: &str| {
        lb.listen_addr(
            pools
                .iter()
                .position(|(n, _, _)| *n == name)
                .expect("a pool"),
        )
    };

    for (pool, version) in [
        ("tls", "1"),
        ("h2", "2"),
        ("auto-h2", "2"),
        ("auto-http1", "1"),
    ] {
        for _ in 0..3 {
            let reply = get(listener(pool), "/", &[]);
            assert_eq!(backend_of(&reply), "b1", "{pool}");
            assert_eq!(via(&reply), version, "{pool}: {}", reply.head);
        }
    }
    for pool in ["wrong-name", "other-ca", "no-client-cert"] {
        let reply = get(listener(pool), "/", &[]);
        assert!(
            reply.status == 502 || reply.status == 503,
            "{pool}: the handshake fails, the request with it: {reply:?}"
        );
    }
    let reply = get(listener("insecure"), "/", &[]);
    assert_eq!(
        backend_of(&reply),
        "b1",
        "insecure_skip_verify takes any name"
    );
    let reply = get(listener("tcp"), "/", &[]);
    assert_eq!(backend_of(&reply), "b1", "{reply:?}");
    assert_eq!(via(&reply), "1", "{}", reply.head);

    // An upgrade through an `auto` pool: tunnelled where the backend chose HTTP/1.1, a plain
    // request where it chose HTTP/2.
    let (head, echoed) = support::upgrade(listener("auto-http1"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echoed, b"ping through the tunnel");
    let reply = support::raw(
        listener("auto-h2"),
        b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(via(&reply), "2", "{}", reply.head);
}

#[test]
fn a_file_that_names_a_missing_ca_file_is_refused_with_the_field() {
    let dir = TempDir::new("upstream-tls-missing");
    let config = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [[pools]]\nname = \"web\"\ntls = true\nca_file = \"{}/nowhere.pem\"\nbackends = [\"127.0.0.1:9\"]\n",
        dir.path().display()
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, config).expect("write the configuration");
    let refused = support::rejected(&["lb", "--config", path.to_str().expect("utf-8")]);
    assert!(refused.contains("pools[0].ca_file"), "{refused}");
    assert!(refused.contains("nowhere.pem"), "{refused}");

    let unverified = "[[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n\
         [[pools]]\nname = \"web\"\ntls = true\nbackends = [\"127.0.0.1:9\"]\n";
    std::fs::write(&path, unverified).expect("write the configuration");
    let refused = support::rejected(&["lb", "--config", path.to_str().expect("utf-8")]);
    assert!(
        refused.contains("pools[0].ca_file: backends' certificates are verified"),
        "{refused}"
    );
}
