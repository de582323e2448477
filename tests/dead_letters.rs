//! The dead-letter producer against the real broker: a copy too large for the broker goes
//! without its value, and every other copy of the same call is still delivered.

mod common;

use std::time::Duration;

use common::*;
use ngsiflow::kafka::dead_letter::{headers as dlh, DeadLetter, DeadLetterProducer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use tokio_util::sync::CancellationToken;

fn letter(id: &str, value: Vec<u8>) -> DeadLetter {
    DeadLetter {
        value: Some(value),
        key: Some(id.as_bytes().to_vec()),
        headers: vec![(dlh::ERROR.to_string(), format!("bad {id}").into_bytes())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_copy_goes_without_its_value_and_the_rest_still_go() {
    let broker = Broker::start();
    create_topics(&broker.addr, &["dl"], 1).await;
    // The producer refuses records above message.max.bytes before they leave the client, with
    // the same MSG_SIZE_TOO_LARGE the broker would answer.
    let base = ngsiflow::kafka::client_config(
        &broker.addr,
        &[("message.max.bytes".to_string(), "20000".to_string())],
    );
    let producer = DeadLetterProducer::new(&base, "dl").unwrap();
    let letters = vec![
        letter("a", b"small a".to_vec()),
        letter("big", vec![b'x'; 100_000]),
        letter("c", b"small c".to_vec()),
        letter("d", b"small d".to_vec()),
    ];
    tokio::time::timeout(
        Duration::from_secs(60),
        producer.send_all(&letters, &CancellationToken::new()),
    )
    .await
    .expect("send_all finished")
    .expect("every copy acknowledged");

    let consumer: StreamConsumer = ngsiflow::kafka::client_config(&broker.addr, &[])
        .set("group.id", "dl-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["dl"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("all four copies arrive")
            .unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let omitted = m
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == dlh::VALUE_OMITTED));
        got.push((key, m.payload().map(<[u8]>::len), omitted));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), Some(7), false),
            ("big".to_string(), None, true),
            ("c".to_string(), Some(7), false),
            ("d".to_string(), Some(7), false),
        ]
    );
}
