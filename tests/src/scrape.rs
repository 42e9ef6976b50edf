//! A scrape of a `/metrics` endpoint, parsed strictly as the Prometheus text format: a line
//! that is not a comment, a `# HELP`, a `# TYPE` or a well-formed sample fails the test, so the
//! tests that read numbers also prove the endpoint speaks the format.

use std::collections::{BTreeMap, BTreeSet};

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape, and the metric families its `# TYPE` lines declare.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> type (counter, gauge, histogram, summary, untyped).
    pub families: BTreeMap<String, String>,
}

impl Scrape {
    /// GETs `url` and parses it; fails the test on a non-200 answer, a wrong content type or
    /// a malformed line.
    pub async fn get(http: &reqwest::Client, url: &str) -> Scrape {
        let response = http.get(url).send().await.expect("/metrics answers");
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = (response.headers().get("content-type"))
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "content type {content_type}"
        );
        let text = response.text().await.expect("a body");
        Scrape::parse(&text).unwrap_or_else(|error| panic!("{url}: {error}\n{text}"))
    }

    /// Parses the Prometheus text exposition format.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        for (number, line) in text.lines().enumerate() {
            let failed = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let words: Vec<&str> = comment.split_whitespace().collect();
                match words.as_slice() {
                    ["TYPE", name, kind] => {
                        let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                        if !valid_name(name) || !known.contains(kind) {
                            return Err(failed("bad TYPE line"));
                        }
                        scrape.families.insert((*name).into(), (*kind).into());
                    }
                    ["HELP", name, ..] if !valid_name(name) => {
                        return Err(failed("bad HELP line"));
                    }
                    _ => {}
                }
                continue;
            }
            scrape
                .samples
                .push(sample(line).map_err(|why| failed(&why))?);
        }
        for sample in &scrape.samples {
            if scrape.family_of(&sample.name).is_none() {
                return Err(format!("{} has no # TYPE line", sample.name));
            }
        }
        Ok(scrape)
    }

    /// The family a sample belongs to (`x_bucket`, `x_sum`, `x_count` belong to histogram `x`).
    fn family_of(&self, sample: &str) -> Option<&str> {
        if let Some((name, _)) = self.families.get_key_value(sample) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            self.families
                .get_key_value(base)
                .map(|(name, _)| name.as_str())
        })
    }

    /// Every name a query may use: the families and the sample names.
    pub fn names(&self) -> BTreeSet<String> {
        let samples = self.samples.iter().map(|s| s.name.clone());
        self.families.keys().cloned().chain(samples).collect()
    }

    /// The sum of the samples named `name` whose labels include every pair of `labels`
    /// (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one sample named `name` with exactly these labels, if there is one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = (labels.iter())
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        (self.samples.iter())
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && (labels.iter()).all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",...} value [timestamp]`.
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inside)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().map_err(|_| "bad value")?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("text after the value".into());
    }
    Ok(Sample {
        name: name.into(),
        labels,
        value,
    })
}

/// The labels up to the closing brace, and what follows it.
fn label_set(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find('=').ok_or("label without a value")?;
        let key = &text[..eq];
        if !valid_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let quoted = text[eq + 1..].strip_prefix('"').ok_or("unquoted label")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return Err("bad escape".into()),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        text = &quoted[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_scrape_parses_and_sums_by_label() {
        let text = "# HELP jobs_total Jobs\n# TYPE jobs_total counter\n\
                    jobs_total{kind=\"a\",who=\"x\\\"y\"} 2\njobs_total{kind=\"b\"} 3 1700000000\n\
                    # TYPE wait_seconds histogram\nwait_seconds_bucket{le=\"+Inf\"} 4\n\
                    wait_seconds_sum 0.5\nwait_seconds_count 4\n";
        let scrape = Scrape::parse(text).expect("parses");
        assert_eq!(scrape.sum("jobs_total", &[]), 5.0);
        assert_eq!(scrape.value("jobs_total", &[("kind", "b")]), Some(3.0));
        assert_eq!(scrape.matching("jobs_total", &[("who", "x\"y")]).count(), 1);
        assert_eq!(scrape.value("wait_seconds_count", &[]), Some(4.0));
        assert!(scrape.names().contains("wait_seconds"));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for text in [
            "# TYPE x counter\nx{a=\"1\" 2\n",
            "# TYPE x counter\nx{a=1} 2\n",
            "# TYPE x counter\nx two\n",
            "# TYPE x counter\n9x 1\n",
            "y 1\n",
            "# TYPE x countr\nx 1\n",
        ] {
            assert!(Scrape::parse(text).is_err(), "{text:?}");
        }
    }
}
