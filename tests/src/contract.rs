//! Checks an API's answers against its OpenAPI contract: the helpers that send requests in the
//! APIs' tests pass every answer through [`Contract::assert_documented`], so every status and
//! problem `code` a test provokes must be one the spec documents for that operation.

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use std::path::Path;
use tower::ServiceExt;

/// An API's spec, as `GET /openapi.json` serves it.
pub struct Contract {
    spec: Value,
}

/// The answers the router gives outside any operation (its fallbacks).
const ROUTE_NOT_FOUND: (u16, &str) = (404, "route-not-found");
const METHOD_NOT_ALLOWED: (u16, &str) = (405, "method-not-allowed");

/// The keys of a path item that are operations.
pub const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl Contract {
    pub fn new(spec: Value) -> Self {
        Self { spec }
    }

    /// Panics, naming the operation and the answer, unless `check` passes.
    pub fn assert_documented(&self, method: &str, uri: &str, status: u16, body: &Value) {
        if let Err(why) = self.check(method, uri, status, body) {
            panic!("{method} {uri} answered {status} {body}: {why}");
        }
    }

    /// Whether `status` (and, for a problem, its `code`) is a documented answer of the
    /// operation `method uri` names. A path no operation has must get `404 route-not-found`,
    /// a method the path lacks `405 method-not-allowed`. The spec and its docs page are not
    /// operations.
    pub fn check(&self, method: &str, uri: &str, status: u16, body: &Value) -> Result<(), String> {
        let path = uri.split('?').next().unwrap_or(uri);
        if path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/") {
            return Ok(());
        }
        let code = body.get("code").and_then(Value::as_str);
        let Some((template, item)) = self.path_item(path) else {
            return expect_fallback(ROUTE_NOT_FOUND, status, code);
        };
        let Some(operation) = item.get(method.to_ascii_lowercase()) else {
            return expect_fallback(METHOD_NOT_ALLOWED, status, code);
        };
        let response = operation
            .pointer(&format!("/responses/{status}"))
            .ok_or_else(|| format!("{status} is not a documented answer of {method} {template}"))?;
        let Some(problem) = response.pointer("/content/application~1problem+json/schema") else {
            return Ok(());
        };
        let code = code.ok_or("a problem without a code")?;
        let documented: Vec<&str> = problem
            .pointer("/allOf/1/properties/code/enum")
            .and_then(Value::as_array)
            .map(|codes| codes.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if documented.contains(&code) {
            Ok(())
        } else {
            Err(format!(
                "`{code}` is not among the documented {status} codes of {method} {template}: \
                 {documented:?}"
            ))
        }
    }

    /// The spec's path that `path` is an instance of (`{name}` matches one segment).
    fn path_item(&self, path: &str) -> Option<(&str, &Value)> {
        let segments: Vec<&str> = path.split('/').collect();
        self.spec["paths"]
            .as_object()?
            .iter()
            .find(|(template, _)| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts.iter().zip(&segments).all(|(part, segment)| {
                        part == segment || (part.starts_with('{') && !segment.is_empty())
                    })
            })
            .map(|(template, item)| (template.as_str(), item))
    }

    /// Every operation of the spec, as (method in capitals, path template).
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut operations = Vec::new();
        if let Some(paths) = self.spec["paths"].as_object() {
            for (path, item) in paths {
                for method in item.as_object().into_iter().flat_map(|item| item.keys()) {
                    if HTTP_METHODS.contains(&method.as_str()) {
                        operations.push((method.to_ascii_uppercase(), path.clone()));
                    }
                }
            }
        }
        operations
    }
}

/// Checks that the router serves exactly the spec's operations:
/// - every operation is served (with no token and no body it gets anything but the router's
///   `route-not-found` or `method-not-allowed`);
/// - on a documented path, every other method is `405 method-not-allowed` (HEAD aside, which
///   axum answers wherever GET is);
/// - no route is given to the router by hand (`.route("...")` in the crate's `src/`, which
///   bypasses the spec) unless `undocumented` names it: that is how a route added without a
///   spec entry is caught, since a router cannot list its routes.
pub async fn assert_router_serves_the_spec(
    app: &Router,
    contract: &Contract,
    src: &Path,
    undocumented: &[&str],
) {
    let operations = contract.operations();
    assert!(!operations.is_empty(), "the spec has no operations");
    for (method, template) in &operations {
        let path = sample_path(template);
        let (status, code) = answer(app, method, &path).await;
        assert!(
            !matches!(
                code.as_deref(),
                Some("route-not-found" | "method-not-allowed")
            ),
            "{method} {template} is in the spec but not served: {status} {code:?}"
        );
        for other in HTTP_METHODS {
            let other = other.to_ascii_uppercase();
            let documented = operations.iter().any(|(m, t)| *m == other && t == template);
            let implicit_head =
                other == "HEAD" && operations.contains(&("GET".into(), template.clone()));
            if documented || implicit_head {
                continue;
            }
            let (status, code) = answer(app, &other, &path).await;
            // An answer to HEAD has no body to carry the code.
            let code = if other == "HEAD" { None } else { code };
            let expected = (other != "HEAD").then_some("method-not-allowed");
            assert_eq!(
                (status, code.as_deref()),
                (405, expected),
                "{other} {template} is served but not in the spec"
            );
        }
    }
    let documented: Vec<String> = operations.into_iter().map(|(_, path)| path).collect();
    for routed in hand_routed_paths(src) {
        assert!(
            documented.contains(&routed) || undocumented.contains(&routed.as_str()),
            "{routed} is routed by hand in {} without a spec entry: route its handler with \
             `routes!` and a `#[utoipa::path]`",
            src.display()
        );
    }
}

/// A concrete path for a template: every `{parameter}` becomes a UUID, which is also a valid
/// text id.
fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|part| {
            if part.starts_with('{') {
                "0190f4c2-7d1e-7cc0-9d8e-5e1a2b3c4d5e"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn answer(app: &Router, method: &str, path: &str) -> (u16, Option<String>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("a request builds");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body["code"].as_str().map(str::to_owned))
}

/// The paths `.route(...)` or `.route_service(...)` calls in `src` give a router (a call with
/// a path that is not a string literal is reported as `<not a literal>`, so it fails too).
pub fn hand_routed_paths(src: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(file) = files.pop() {
        if file.is_dir() {
            let entries = std::fs::read_dir(&file).expect("the source directory reads");
            files.extend(entries.map(|entry| entry.expect("a directory entry").path()));
            continue;
        }
        if file.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a source file reads");
        for call in [".route(", ".route_service("] {
            for (at, _) in text.match_indices(call) {
                let rest = text[at + call.len()..].trim_start();
                let path = rest
                    .strip_prefix('"')
                    .and_then(|rest| rest.split_once('"'))
                    .map_or("<not a literal>", |(path, _)| path);
                paths.push(path.to_owned());
            }
        }
    }
    paths
}

/// Validates `spec` against the OpenAPI 3.1 schema with openapi-spec-validator, which
/// `scripts/test.sh` installs (`ensure_api_tools` in `scripts/lib.sh`), and checks that every
/// security scheme an operation names is defined, which OpenAPI requires and the validator
/// does not check (the operations spell scheme names out as strings).
pub fn assert_valid_openapi_3_1(name: &str, spec: &Value) {
    assert_eq!(spec["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    let undefined = undefined_security_schemes(spec);
    assert!(
        undefined.is_empty(),
        "the {name} spec's operations name undefined security schemes: {undefined:?}"
    );
    let validator = std::env::var("OPENAPI_SPEC_VALIDATOR").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/delivery-platform/api-tools/bin/openapi-spec-validator")
    });
    let file = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
    std::fs::write(&file, spec.to_string()).expect("the spec is written");
    let output = std::process::Command::new(&validator)
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {validator}: {e}. scripts/test.sh installs it; or run \
                 `source scripts/lib.sh && ensure_api_tools`"
            )
        });
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "the {name} spec is not valid OpenAPI 3.1:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `method path: scheme` for each security requirement of an operation whose scheme is not in
/// `components.securitySchemes`.
fn undefined_security_schemes(spec: &Value) -> Vec<String> {
    let defined = spec.pointer("/components/securitySchemes");
    let mut undefined = Vec::new();
    let paths = spec["paths"].as_object().into_iter().flatten();
    for (path, item) in paths {
        let operations = item.as_object().into_iter().flatten();
        for (method, operation) in operations.filter(|(m, _)| HTTP_METHODS.contains(&m.as_str())) {
            let requirements = operation["security"].as_array().into_iter().flatten();
            for scheme in requirements
                .filter_map(Value::as_object)
                .flat_map(|r| r.keys())
            {
                if defined.and_then(|schemes| schemes.get(scheme)).is_none() {
                    undefined.push(format!("{method} {path}: {scheme}"));
                }
            }
        }
    }
    undefined
}

fn expect_fallback(
    (status, code): (u16, &str),
    got: u16,
    got_code: Option<&str>,
) -> Result<(), String> {
    if got == status && got_code == Some(code) {
        Ok(())
    } else {
        Err(format!(
            "no operation matches, so the answer must be {status} `{code}`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract() -> Contract {
        Contract::new(json!({"paths": {"/things/{id}": {"get": {"responses": {
            "200": {"content": {"application/json": {}}},
            "404": {"content": {"application/problem+json": {"schema": {"allOf": [
                {"$ref": "#/components/schemas/Problem"},
                {"properties": {"code": {"enum": ["thing-not-found"]}}}
            ]}}}}
        }}}}}))
    }

    #[test]
    fn security_requirements_must_name_defined_schemes() {
        let spec = json!({
            "paths": {"/things": {
                "get": {"security": [{"bearer": []}, {"cookie": []}]},
                "delete": {"security": [{}, {"cookie": []}]},
                "summary": "not an operation",
            }},
            "components": {"securitySchemes": {"bearer": {}}}
        });
        assert_eq!(
            undefined_security_schemes(&spec),
            ["delete /things: cookie", "get /things: cookie"]
        );
    }

    #[test]
    fn documented_answers_pass_and_others_are_named() {
        let contract = contract();
        let missing = json!({"code": "thing-not-found"});
        assert!(
            contract
                .check("GET", "/things/7?x=1", 200, &json!({}))
                .is_ok()
        );
        assert!(contract.check("GET", "/things/7", 404, &missing).is_ok());
        let other = json!({"code": "gone"});
        assert!(contract.check("GET", "/things/7", 404, &other).is_err());
        assert!(contract.check("GET", "/things/7", 500, &json!({})).is_err());
        let no_route = json!({"code": "route-not-found"});
        assert!(contract.check("GET", "/nothing", 404, &no_route).is_ok());
        assert!(contract.check("GET", "/nothing", 200, &json!({})).is_err());
        let no_method = json!({"code": "method-not-allowed"});
        assert!(contract.check("POST", "/things/7", 405, &no_method).is_ok());
    }
}
