//! The per-request cost of HTTP filters: plain regexes (the `regex` crate,
//! linear time) against look-around ones (fancy-regex), on a request of the
//! usual shape. Rounds interleave the filters so that machine noise hits
//! all of them alike; medians are printed with the ratio to the baseline,
//! a plain header filter that does not match (every header is tried).
//!
//!     cargo run --release -p mirrord-config --example filter_cost

// A benchmark: a broken filter literal should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use mirrord_config::{Config, Filter};

const ROUNDS: usize = 15;
const ITERATIONS: usize = 20_000;

fn filter(http_filter: &str) -> Filter {
    let json = format!(r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{http_filter}}}}}}}}}"#);
    Config::from_json(&json).expect("valid filter").incoming.http_filter.expect("a filter").filter
}

fn main() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("host", b"api.shop.svc.cluster.local".as_slice()),
        ("user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36".as_slice()),
        ("accept", b"application/json, text/plain, */*".as_slice()),
        ("accept-encoding", b"gzip, deflate, br".as_slice()),
        ("accept-language", b"en-GB,en;q=0.9".as_slice()),
        ("content-type", b"application/json".as_slice()),
        ("x-request-id", b"7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b".as_slice()),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_slice()),
        ("baggage", b"userId=alice,serverNode=DF%2028,mirrord-session=bob".as_slice()),
        ("cookie", b"session=0123456789abcdef; theme=dark".as_slice()),
    ];
    let path = "/api/v1/orders/42?expand=items&debug=0";
    let cases = [
        ("plain header, no match (baseline)", filter(r#"{"header_filter":"^baggage: .*mirrord-session=alice.*$"}"#)),
        ("plain header, match", filter(r#"{"header_filter":"^baggage: .*mirrord-session=bob.*$"}"#)),
        ("look-ahead header, no match", filter(r#"{"header_filter":"^baggage: (?!.*mirrord-session=bob)"}"#)),
        ("look-ahead header (probe exclusion)", filter(r#"{"header_filter":"^User-Agent: (?!kube-probe)"}"#)),
        ("plain path", filter(r#"{"path_filter":"^/api/v1/orders"}"#)),
        ("look-ahead path (probe exclusion)", filter(r#"{"path_filter":"^(?!/health/)"}"#)),
        ("path with query, no match", filter(r#"{"path_filter":"[?&]debug=1"}"#)),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, f)) in cases.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..ITERATIONS {
                black_box(f.matches(black_box("POST"), black_box(path), headers.iter().copied()));
            }
            samples[i].push(start.elapsed().as_nanos() as f64 / ITERATIONS as f64);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(|a, b| a.total_cmp(b));
            s[s.len() / 2]
        })
        .collect();
    println!("filter cost per request ({ROUNDS} interleaved rounds of {ITERATIONS}, median; 10 headers)");
    for ((name, _), m) in cases.iter().zip(&medians) {
        let (min, max) = samples[cases.iter().position(|(n, _)| n == name).unwrap_or(0)]
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!("  {name:<38} {m:>8.0} ns   {:>5.2}x baseline   (spread {min:.0}-{max:.0})", m / medians[0]);
    }
}
