//! The access log as an nginx user checks theirs: one JSON object per request with every field
//! (the route that chose, the backend, bytes, times, the request ID the backend was told too),
//! nginx's `combined` lines, and SIGUSR1 reopening the file after logrotate moved it.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::{Process, TempDir, echo, eventually, raw};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
    eventually(Duration::from_secs(30), "access log lines", || {
        lines(path).len() >= count
    });
    lines(path)
}

fn request(address: SocketAddr, text: &str) -> support::Reply {
    raw(address, text.as_bytes())
}

#[test]
fn every_request_is_one_json_line_with_every_field_and_usr1_reopens_the_file() {
    let (_web, web) = echo("web", &[]);
    let dir = TempDir::new("access-log");
    let log = dir.path().join("access.log");
    let config = dir.path().join("ballast.toml");
    let listen = support::unused_addr();
    std::fs::write(
        &config,
        format!(
            "access_log = \"{}\"\nrequest_id_header = true\n\n\
             [[listeners]]\nlisten = \"{listen}\"\nroutes = \"main\"\n\n\
             [[pools]]\nname = \"web\"\nbackends = [\"{web}\"]\n\n\
             [[route_tables]]\nname = \"main\"\n\
             [[route_tables.routes]]\nhost = \"www.example.test\"\npool = \"web\"\n",
            log.display()
        ),
    )
    .expect("write");
    let lb = Process::start(&["lb", "--config", config.to_str().expect("utf-8")], 1);

    let kept = request(
        listen,
        "GET /a?b=1 HTTP/1.1\r\nHost: www.example.test\r\nX-Request-Id: trace-42\r\n\
         User-Agent: test \"agent\"\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(kept.status, 200, "{kept:?}");
    assert!(
        kept.head
            .to_ascii_lowercase()
            .contains("x-request-id: trace-42"),
        "{kept:?}"
    );
    let posted = request(
        listen,
        "POST /up HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nhello",
    );
    assert_eq!(posted.status, 200, "{posted:?}");
    let missed = request(
        listen,
        "GET /x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(missed.status, 404, "{missed:?}");

    let written = wait_for_lines(&log, 3);
    let entries: Vec<serde_json::Value> = written
        .iter()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    // Workers buffer their lines apart, so lines from two workers need not be in request order.
    let by_path = |path: &str| {
        entries
            .iter()
            .find(|entry| entry["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path} in {written:?}"))
    };
    let first = by_path("/a?b=1");
    for field in [
        "time",
        "client",
        "method",
        "host",
        "path",
        "protocol",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "backend_ms",
        "backend",
        "pool",
        "route",
        "retries",
        "request_id",
        "referer",
        "user_agent",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "www.example.test");
    assert_eq!(first["path"], "/a?b=1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["backend"], web.to_string());
    assert_eq!(first["pool"], "web");
    assert_eq!(first["route"], "main#0");
    assert_eq!(first["retries"], 0);
    assert_eq!(first["request_id"], "trace-42");
    assert_eq!(first["user_agent"], "test \"agent\"");
    assert_eq!(
        first["bytes_out"], 4,
        "the echo's body: its name and a newline"
    );
    assert!(first["backend_ms"].as_f64().is_some_and(|ms| ms >= 0.0));

    let second = by_path("/up");
    assert_eq!(second["bytes_in"], 5);
    let id = second["request_id"].as_str().expect("an ID");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(
        posted
            .head
            .to_ascii_lowercase()
            .contains(&format!("x-request-id: {id}")),
        "{posted:?}"
    );

    let third = by_path("/x");
    assert_eq!(third["status"], 404);
    assert_eq!(third["pool"], serde_json::Value::Null);
    assert_eq!(third["backend"], serde_json::Value::Null);

    // logrotate: move the file away, SIGUSR1, and the next line starts a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    lb.signal("USR1");
    eventually(Duration::from_secs(30), "a new access log file", || {
        log.exists()
    });
    let after = request(
        listen,
        "GET /after HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(after.status, 200, "{after:?}");
    let fresh = wait_for_lines(&log, 1);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains("\"path\":\"/after\""), "{fresh:?}");
    assert_eq!(lines(&rotated).len(), 3);
}

#[test]
fn combined_lines_read_as_nginx_writes_them() {
    let (_web, web) = echo("web", &[]);
    let dir = TempDir::new("access-log-combined");
    let log = dir.path().join("combined.log");
    let (_lb, listen) = support::lb(
        &[web],
        &[
            "--access-log",
            log.to_str().expect("utf-8"),
            "--access-log-format",
            "combined",
        ],
    );
    let reply = request(
        listen,
        "GET /page?q=1 HTTP/1.1\r\nHost: a.test\r\nReferer: http://r.test/\r\n\
         User-Agent: curl/8\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let line = wait_for_lines(&log, 1).remove(0);
    // $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    // "$http_referer" "$http_user_agent"
    let (start, rest) = line.split_once(" [").expect("a time");
    assert_eq!(start, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").expect("a time");
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert_eq!(
        rest,
        "\"GET /page?q=1 HTTP/1.1\" 200 4 \"http://r.test/\" \"curl/8\""
    );

    // A request refused before its head could be read has its line too, as nginx's 400s do.
    let refused = request(listen, "NOT A REQUEST\r\n\r\n");
    assert_eq!(refused.status, 400, "{refused:?}");
    let line = wait_for_lines(&log, 2).remove(1);
    assert!(line.contains("\"- - HTTP/1.1\" 400 "), "{line}");
}

/// A client that gives up before the response (an HTTP/2 stream reset) has its line, as nginx
/// logs a closed request: 499.
#[test]
fn a_request_the_client_gave_up_on_is_logged_as_499() {
    let (_slow, slow) = echo("slow", &["--latency", "3s"]);
    let dir = TempDir::new("access-log-499");
    let log = dir.path().join("access.log");
    let (lb, listen) = support::lb(&[slow], &["--access-log", log.to_str().expect("utf-8")]);
    let admin = lb.admin_addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lines = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(listen)
            .await
            .expect("connect");
        let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::get(format!("http://{listen}/given-up"))
            .body(())
            .expect("request");
        let (_response, mut stream) = client.send_request(request, true).expect("sent");
        // The backend takes 3 s; the client cancels once the LB has the request at the backend.
        tokio::task::spawn_blocking(move || {
            eventually(
                Duration::from_secs(30),
                "the request at the backend",
                || support::metric(admin, "ballast_backend_in_flight{") == Some(1.0),
            );
        })
        .await
        .expect("waited");
        stream.send_reset(h2::Reason::CANCEL);
        // The runtime keeps the connection going (the reset is sent) while the log is read.
        let log = log.clone();
        tokio::task::spawn_blocking(move || wait_for_lines(&log, 1))
            .await
            .expect("lines")
    });
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(line["path"], "/given-up", "{line}");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["protocol"], "HTTP/2.0", "{line}");
}
