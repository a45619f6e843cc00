//! The sidecar's hot pure functions, per request: HTTP/1 head parsing with
//! its framing checks, chunked body tracking, the routing decision with 0, 1
//! and 10 sessions that have header filters, and filter matching with plain
//! and look-around regexes.
//!
//!     cargo bench -p mirrord-proxy --bench hot_paths

// A benchmark: a broken literal should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mirrord_config::{Config, Filter};
use mirrord_proxy::h1::body::{Body, Chunked};
use mirrord_proxy::h1::head::{parse_request, Fields};
use mirrord_proxy::ports::PortList;
use mirrord_proxy::session::{RequestView, Session, Sessions};

const PORT: u16 = 8080;

const HEAD: &[u8] = b"POST /api/v1/orders/42?expand=items HTTP/1.1\r\n\
Host: api.shop.svc.cluster.local\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Content-Type: application/json\r\n\
Content-Length: 27\r\n\
X-Request-Id: 7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b\r\n\
Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
Baggage: userId=alice,serverNode=DF%2028,mirrord-session=bob\r\n\r\n";

fn config(incoming: &str) -> Config {
    Config::from_json(&format!(r#"{{"feature":{{"network":{{"incoming":{incoming}}}}}}}"#)).expect("valid config")
}

fn filter(http_filter: &str) -> Filter {
    let incoming = format!(r#"{{"mode":"steal","http_filter":{http_filter}}}"#);
    config(&incoming).incoming.http_filter.expect("a filter").filter
}

fn heads(c: &mut Criterion) {
    let mut fields = Fields::default();
    c.bench_function("h1 request head: parse and framing checks (11 fields)", |b| {
        b.iter(|| parse_request(black_box(HEAD), &mut fields).unwrap().unwrap())
    });
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'x'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    c.bench_function("h1 chunked body: 16 KiB in 1 KiB chunks, tracked", |b| {
        b.iter(|| Body::Chunked(Chunked::default()).advance(black_box(&chunked)).unwrap())
    });
}

fn routing(c: &mut Criterion) {
    let mut fields = Fields::default();
    let head = parse_request(HEAD, &mut fields).unwrap().unwrap();
    let bytes = &HEAD[..head.len];
    let headers: Vec<(&str, &[u8])> = fields.headers(bytes).collect();
    let view =
        || RequestView { method: fields.method(bytes), path: fields.target(bytes), headers: &headers, body: None };
    let mut group = c.benchmark_group("routing decision, sessions with header filters that do not match");
    for n in [0usize, 1, 10] {
        let sessions = Sessions::new(PortList::default());
        let mut receivers = Vec::new();
        for i in 0..n {
            let incoming = format!(
                r#"{{"mode":"steal","http_filter":{{"header_filter":"^baggage: .*mirrord-session=dev{i}\\b"}}}}"#
            );
            let (session, rx) = Session::new(
                i as u64,
                format!("s{i}"),
                format!("dev{i}"),
                format!("dev{i}").as_str().into(),
                config(&incoming),
            );
            sessions.add(session).expect("filtered steals share a port");
            receivers.push(rx);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| sessions.decide(PORT, Some(black_box(view()))))
        });
    }
    group.finish();
}

fn filters(c: &mut Criterion) {
    let mut fields = Fields::default();
    let head = parse_request(HEAD, &mut fields).unwrap().unwrap();
    let bytes = &HEAD[..head.len];
    let headers: Vec<(&str, &[u8])> = fields.headers(bytes).collect();
    let path = fields.target(bytes);
    let mut group = c.benchmark_group("filter match, 11 fields");
    for (name, f) in [
        ("plain header regex, no match", filter(r#"{"header_filter":"^baggage: .*mirrord-session=alice.*$"}"#)),
        ("look-ahead header regex, no match", filter(r#"{"header_filter":"^baggage: (?!.*mirrord-session=bob)"}"#)),
        ("plain path regex", filter(r#"{"path_filter":"^/api/v1/orders"}"#)),
        ("look-ahead path regex", filter(r#"{"path_filter":"^(?!/health/)"}"#)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| f.matches(black_box("POST"), black_box(path), headers.iter().copied()))
        });
    }
    group.finish();
}

criterion_group!(benches, heads, routing, filters);
criterion_main!(benches);
