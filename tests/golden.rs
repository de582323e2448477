//! Golden-file tests of the pure core: raw record → decode → transform, compared with
//! `tests/golden/*.expected.json` (see tests/golden/README.md).

use std::path::PathBuf;

use chrono::TimeZone;
use ngsiflow::flow::load_flows;
use ngsiflow::flow::transform::{transform, OpKind, TransformOptions};
use ngsiflow::ngsi::decode;
use ngsiflow::ngsi::time::to_rfc3339_micros;
use ngsiflow::ngsi::value::CellValue;
use serde_json::{json, Value};

fn cell(v: &CellValue) -> Value {
    match v {
        CellValue::Null => Value::Null,
        CellValue::Text(s) => json!({"text": s}),
        CellValue::Instant(t) => json!({"instant": to_rfc3339_micros(t)}),
        CellValue::Attr(a) => json!({
            "ngsi_type": a.ngsi_type.as_deref(),
            "value": a.value.to_json(),
            "instant": a.instant().map(to_rfc3339_micros),
            "ewkb": a.ewkb().map(hex::encode),
        }),
    }
}

#[test]
fn decode_and_transform_match_the_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let flows = load_flows(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows"),
        "",
        "g",
    )
    .unwrap();
    let recv = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 8, 15, 2).unwrap();
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 4);
    for input in inputs {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&input).unwrap()).unwrap();
        let spec = flows.iter().find(|f| f.name == case["flow"]).unwrap();
        let headers: Vec<(String, Vec<u8>)> = case["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().as_bytes().to_vec()))
            .collect();
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let value = case["value"].to_string();
        let got = match decode(Some(value.as_bytes()), &pairs) {
            Err(e) => json!({"decode_error": e.to_string()}),
            Ok(n) => Value::Array(
                transform(spec, n, recv, &TransformOptions::default())
                    .into_iter()
                    .map(|r| match r {
                        Ok(op) => json!({
                            "target": op.target.to_string(),
                            "kind": if op.kind == OpKind::Delete { "delete" } else { "write" },
                            "columns": op.columns.iter().map(|(c, v)| (c.to_string(), cell(v))).collect::<serde_json::Map<_, _>>(),
                        }),
                        Err(e) => json!({"entity": e.entity_index, "error": e.message, "target": e.target.map(|t| t.to_string())}),
                    })
                    .collect(),
            ),
        };
        let expected_path = PathBuf::from(
            input
                .to_string_lossy()
                .replace(".input.json", ".expected.json"),
        );
        let rendered = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} missing (UPDATE_GOLDEN=1)", expected_path.display()));
        assert_eq!(rendered, expected, "{}", input.display());
    }
}
