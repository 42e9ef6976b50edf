//! A real browser for tests: Debian's headless chromium, driven through chromedriver with
//! the W3C WebDriver protocol (plain JSON over HTTP, spoken here with reqwest, so no driver
//! crate is needed). `scripts/lib.sh`'s `ensure_chromium` installs both programs.

use crate::free_port;
use base64::Engine as _;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One chromedriver and one headless chromium session; both end when this is dropped.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    // Killed on drop, taking its browser with it.
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free port (`CHROMEDRIVER`, default `chromedriver` on the
    /// path) and a headless chromium session (`CHROMIUM`, default `/usr/bin/chromium`).
    pub async fn start() -> Browser {
        let port = free_port();
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{driver_bin} must be installed (scripts/lib.sh ensure_chromium): {error}")
            });
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        crate::eventually(Duration::from_secs(30), "chromedriver to be ready", || {
            let http = http.clone();
            let status = format!("{base}/status");
            async move {
                let reply: Value = http.get(status).send().await.ok()?.json().await.ok()?;
                reply["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await;
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-sync",
                    "--window-size=1280,760", "--hide-scrollbars",
                ],
            },
        }}});
        let mut browser = Browser {
            http,
            session: base,
            _driver: driver,
        };
        let created = browser.call("POST", "/session", capabilities).await;
        let id = created["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_owned();
        browser.session = format!("{}/session/{id}", browser.session);
        browser
    }

    /// One WebDriver command; its `value`. A WebDriver error fails the test with its message.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        // Before a session exists, `session` is the driver's address.
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status();
        let reply: Value = response.json().await.expect("WebDriver answers JSON");
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {reply}"
        );
        reply["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .expect("an element reference")
            .to_owned()
    }

    /// Types `text` into the element `css` selects, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Runs `script` (a function body; `return` gives its value) in the page.
    pub async fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The text of the element `css` selects, or `None` while there is none.
    pub async fn text(&self, css: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        );
        self.run(&script).await.as_str().map(str::to_owned)
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 PNG"))
            .expect("a screenshot decodes")
    }

    /// Ends the session (the browser exits); the driver goes when this is dropped.
    pub async fn quit(self) {
        self.call("DELETE", "", Value::Null).await;
    }
}
