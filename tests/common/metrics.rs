//! Reading `/metrics`: one scrape, checked to be OpenMetrics text that parses, and its samples
//! by name and labels.

/// Scrapes `{base}/metrics`; asserts the content type and that every sample line is a number.
pub async fn scrape(http: &reqwest::Client, base: &str) -> prometheus_parse::Scrape {
    let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "not a sample line: {line:?}");
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses as Prometheus text")
}

/// The value of the first sample `name` whose labels include `labels`; panics if there is none.
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name} is not a number: {other:?}"),
    }
}

/// One unlabelled figure, scraped now.
pub async fn figure(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    value(&scrape(http, base).await, name, &[])
}
