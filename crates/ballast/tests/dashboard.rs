//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, which `scripts/test`
//! installs) loads the page from `ballast control`, a route is added and a backend drained through
//! the admin API, and the page — polling on its own, never reloaded — shows both. The browser is driven
//! over the DevTools protocol; a screenshot is kept in the test's target directory.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::{cli, control, echo};
use tungstenite::Message;

/// Headless Chromium, killed when dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools_port: u16,
}

impl Browser {
    fn start(dir: &std::path::Path) -> Self {
        let program = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|name| {
                Command::new(name)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .expect("Chromium is installed (scripts/test installs Debian's `chromium`)");
        let profile = dir.join("chromium-profile");
        let mut child = Command::new(program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1300",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // It says where its DevTools endpoint listens on stderr, then keeps talking there.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium reports its DevTools endpoint");
        let devtools_port = url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("a port in {url}"));
        Self {
            child,
            profile,
            devtools_port,
        }
    }

    /// The DevTools WebSocket of the browser's first page.
    fn page(&self) -> Page {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.devtools_port)).expect("DevTools HTTP");
        stream
            .write_all(
                format!(
                    "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                    self.devtools_port
                )
                .as_bytes(),
            )
            .expect("write");
        // Chromium keeps the connection open: read the head, then Content-Length bytes.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("DevTools answers");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("the target list");
        let targets: Value = serde_json::from_slice(&body).expect("a JSON target list");
        let url = targets
            .as_array()
            .and_then(|list| list.iter().find(|t| t["type"] == "page"))
            .and_then(|page| page["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (socket, _) = tungstenite::connect(url).expect("DevTools WebSocket");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
        }
        Page { socket, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One page, driven over the DevTools protocol.
struct Page {
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    /// Sends `method` and waits for its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .expect("send");
        loop {
            let message = self.socket.read().expect("read");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let answer: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it equals `expected` (at most `limit`).
    fn wait_for(&mut self, expression: &str, expected: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.evaluate(expression);
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{expression}` is {value}, not {expected:?}, after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn the_dashboard_shows_a_backend_drained_through_the_api_without_a_reload() {
    let dir = std::env::temp_dir().join(format!("ballast-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let token = "dashboard-test-token-0123456789";
    let control = control(&url, &dir, token, &[]);
    let admin = control.listen_addr(0);
    let (_one, first) = echo("one", &[]);
    let (_two, second) = echo("two", &[]);
    let run = |args: &[&str]| {
        let output = cli(admin, token, args);
        assert!(output.status.success(), "{args:?}: {output:?}");
    };
    run(&[
        "pool",
        "create",
        "shop",
        "--dns-name",
        "lb.shop.ballast.local",
    ]);
    run(&["backend", "add", "shop", &first.to_string()]);
    run(&["backend", "add", "shop", &second.to_string()]);

    let browser = Browser::start(&dir);
    let mut page = browser.page();
    page.call("Page.enable", json!({}));
    page.call(
        "Page.navigate",
        json!({"url": format!("http://{admin}/#token={token}")}),
    );
    let state_of = |backend: std::net::SocketAddr| {
        format!(
            "document.querySelector('tr[data-backend=\"{backend}\"] .admin-state')?.textContent \
             ?? 'not shown'"
        )
    };
    page.wait_for(&state_of(first), "active", Duration::from_secs(20));
    page.wait_for(&state_of(second), "active", Duration::from_secs(5));
    assert_eq!(
        page.evaluate("document.querySelector('[data-algorithm-of=\"shop\"]').value"),
        "round_robin"
    );
    assert_eq!(
        page.evaluate("typeof uPlot"),
        "function",
        "the charting library loaded"
    );

    // A route added through the CLI shows in its table, as the page polls.
    run(&[
        "route",
        "add",
        "edge",
        "--host",
        "*.shop.test",
        "--path-prefix",
        "/cart",
        "--pool",
        "shop",
    ]);
    page.wait_for(
        "document.querySelector('tr[data-route=\"edge#0\"]')?.textContent ?? 'not shown'",
        "edge0host *.shop.test, path /cart/…pool shop",
        Duration::from_secs(10),
    );

    // A pool's own policy shows under its name, as the API names the fields.
    run(&[
        "pool",
        "set-policy",
        "shop",
        "--sticky-cookie",
        "lb",
        "--max-requests",
        "100",
    ]);
    page.wait_for(
        "document.querySelector('[data-pool=\"shop\"] .policy')?.textContent ?? 'not shown'",
        "policy: max_requests 100 · sticky_cookie lb",
        Duration::from_secs(10),
    );

    run(&["backend", "drain", "shop", &first.to_string()]);
    page.wait_for(&state_of(first), "draining", Duration::from_secs(10));
    assert_eq!(page.evaluate(&state_of(second)), "active");

    // An action on the page itself: pick maglev and apply; the API then reports it.
    page.evaluate(
        "(() => { const s = document.querySelector('[data-algorithm-of=\"shop\"]'); \
         s.value = 'maglev'; s.nextElementSibling.click(); })()",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = cli(admin, token, &["pool", "show", "shop"]);
        if String::from_utf8_lossy(&output.stdout).contains("maglev") {
            break;
        }
        assert!(Instant::now() < deadline, "the page's algorithm change");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Numbers in the change log as people read them, not as JSON writes them.
    assert_eq!(
        page.evaluate(
            "describeWrite({op: 'set_health', pool: 'shop', phi: 3.9e-8, reason: 'ok', weight: 2})"
        ),
        "pool=shop phi=0.00 reason=ok weight=2"
    );
    // A long step-down reason wraps in its box; the page stays as wide as the window.
    page.evaluate(
        "renderLeadership({identity: 'control-1', leading: false, election: 'redis', \
         token: null, last_step_down: 'lost the lease: '.repeat(150)})",
    );
    let width = page.evaluate(
        "String(document.documentElement.scrollWidth <= window.innerWidth) + ' ' + \
         document.documentElement.scrollWidth",
    );
    assert!(
        width.as_str().is_some_and(|w| w.starts_with("true")),
        "the page overflows its window: {width}"
    );
    page.evaluate("poll()");

    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&kept, &png).expect("screenshot written");
    println!("screenshot: {}", kept.display());
    drop(browser);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
