//! `trainctl parse-log` on real-format samples of every family, and the no-panic property.

use crate::common::Env;
use proptest::prelude::*;

const SAMPLE: &str = "\
{\"step\": 1, \"loss\": 2.5, \"acc\": 0.1}
{\"type\": \"progress\", \"data\": {\"epoch\": 1, \"total_epochs\": 4, \"train_loss\": 1.25}}
step=7 loss=0.75 lr=1e-4
Epoch 2/4
1875/1875 [==============================] - 5s 2ms/step - loss: 0.2950 - accuracy: 0.9146
{'loss': 2.3, 'learning_rate': 4.9e-05, 'epoch': 0.05}
  5%|\u{258c}         | 50/1000 [00:10<03:10,  5.00it/s, loss=0.32]\r 10%|\u{2588}         | 100/1000 [00:20<03:00,  5.00it/s, loss=0.30]
Epoch 3: 100%|\u{2588}\u{2588}\u{2588}| 938/938 [00:15<00:00, 60.12it/s, v_num=0, train_loss=0.123]
Train Epoch: 1 [640/60000 (1%)]\tLoss: 2.289124
iter 100: loss 2.4512, time 35.21ms, mfu 12.34%
      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size
      1/100      2.61G      1.215      1.424      1.227         29        640: 100%|\u{2588}| 8/8 [00:02<00:00,  3.21it/s]
{\"loss\": NaN, \"grad\": Infinity}
";

fn points(env: &Env) -> Vec<serde_json::Value> {
    let file = env.dir.path().join("sample.log");
    std::fs::write(&file, SAMPLE).unwrap();
    env.ok(&["parse-log", file.to_str().unwrap(), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn has(points: &[serde_json::Value], name: &str, value: serde_json::Value, line: u64) -> bool {
    points
        .iter()
        .any(|p| p["name"] == name && p["value"] == value && p["line"] == line)
}

#[test]
fn parse_log_finds_every_family() {
    let env = Env::new("", "0");
    let p = points(&env);
    let expect: &[(&str, serde_json::Value, u64)] = &[
        ("loss", 2.5.into(), 1),
        ("train_loss", 1.25.into(), 2),
        ("lr", 1e-4.into(), 3),
        ("accuracy", 0.9146.into(), 5),
        ("learning_rate", 4.9e-05.into(), 6),
        ("loss", 0.32.into(), 7),
        ("loss", 0.30.into(), 7),
        ("train_loss", 0.123.into(), 8),
        ("loss", 2.289124.into(), 9),
        ("mfu", 12.34.into(), 10),
        ("box_loss", 1.215.into(), 12),
        ("loss", "NaN".into(), 13),
        ("grad", "inf".into(), 13),
    ];
    for (name, value, line) in expect {
        assert!(
            has(&p, name, value.clone(), *line),
            "missing {name}={value} on line {line} in {p:#?}"
        );
    }
    // Context: steps and epochs attach to the points that follow them.
    let tqdm = p
        .iter()
        .find(|x| x["line"] == 7 && x["value"] == 0.30)
        .unwrap();
    assert_eq!(tqdm["step"], 100);
    let keras = p.iter().find(|x| x["name"] == "accuracy").unwrap();
    assert_eq!(
        (keras["epoch"].as_f64(), keras["step"].as_i64()),
        (Some(2.0), Some(1875))
    );
    let hf = p.iter().find(|x| x["name"] == "learning_rate").unwrap();
    assert_eq!(hf["epoch"], 0.05);
    let yolo = p.iter().find(|x| x["name"] == "cls_loss").unwrap();
    assert_eq!(yolo["epoch"], 1.0);
    // `v_num` and context keys are not points.
    assert!(
        !p.iter()
            .any(|x| x["name"] == "v_num" || x["name"] == "epoch" || x["name"] == "step")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut p = trainctl::metrics::LogParser::new();
        let mut n = 0usize;
        p.feed(&bytes, &mut |_| n += 1);
        p.finish(&mut |_| n += 1);
    }

    #[test]
    fn parser_never_panics_on_log_like_fragments(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("{".to_string()), Just("}".to_string()), Just("'".to_string()),
                Just("\"".to_string()), Just(":".to_string()), Just("=".to_string()),
                Just("/".to_string()), Just("|".to_string()), Just("\r".to_string()),
                Just("\n".to_string()), Just("Epoch ".to_string()), Just("iter ".to_string()),
                Just("step ".to_string()), Just("nan".to_string()), Just("-inf".to_string()),
                Just("1e309".to_string()), Just("99999999999999999999".to_string()),
                Just("      Epoch    GPU_mem   box_loss\n".to_string()),
                Just("Class mAP50\n".to_string()), Just("all".to_string()),
                Just("\u{2501}".to_string()), Just("[".to_string()), Just(" ".to_string()),
                "[a-z_]{1,8}", "-?[0-9]{1,4}(\\.[0-9]{1,4})?",
            ],
            0..64,
        ),
        cut in 0usize..400,
    ) {
        let text = parts.concat();
        let bytes = text.as_bytes();
        let cut = cut.min(bytes.len());
        // Split anywhere, even inside a UTF-8 sequence: same points as one feed.
        let mut a = Vec::new();
        let mut p = trainctl::metrics::LogParser::new();
        p.feed(&bytes[..cut], &mut |x| a.push(x.to_owned_point()));
        p.feed(&bytes[cut..], &mut |x| a.push(x.to_owned_point()));
        p.finish(&mut |x| a.push(x.to_owned_point()));
        let (b, _) = trainctl::metrics::parse_all(bytes);
        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}

/// Real logs of real frameworks (`tools/corpus/generate.py` captured them, with the truth
/// from each framework's own history object): every true point is found with its name,
/// value and step or epoch (recall 100 %); points that match nothing are counted and
/// printed (precision), bounded so a regression that floods the metric list fails.
#[test]
fn the_framework_corpus_is_read_completely() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frameworks");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() >= 8, "{logs:?}");
    let mut report = Vec::new();
    for log in logs {
        let name = log.file_stem().unwrap().to_string_lossy().into_owned();
        let truth: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(log.with_extension("truth.json")).unwrap())
                .unwrap();
        let (points, _) = trainctl::metrics::parse_all(&std::fs::read(&log).unwrap());
        // As printed: 4 decimals (Keras), 3 significant digits (tqdm and Lightning postfixes).
        let close = |a: f64, b: f64| (a - b).abs() <= 6e-5 + 5e-3 * b.abs();
        let matches = |t: &serde_json::Value, p: &trainctl::model::MetricPoint| {
            p.name == t["name"].as_str().unwrap()
                && close(p.value, t["value"].as_f64().unwrap())
                && t.get("step").is_none_or(|s| p.step == s.as_i64())
                && t.get("epoch").is_none_or(|e| p.epoch == e.as_f64())
        };
        let missed: Vec<&serde_json::Value> = truth
            .iter()
            .filter(|t| !points.iter().any(|p| matches(t, p)))
            .collect();
        let extra = points
            .iter()
            .filter(|p| !truth.iter().any(|t| matches(t, p)))
            .count();
        report.push(format!(
            "{name}: recall {}/{}, precision {}/{}",
            truth.len() - missed.len(),
            truth.len(),
            points.len() - extra,
            points.len()
        ));
        assert!(
            missed.is_empty(),
            "{name}: {} of {} true points missed, e.g. {:?}; parsed: {:?}",
            missed.len(),
            truth.len(),
            missed.iter().take(3).collect::<Vec<_>>(),
            points.iter().take(8).collect::<Vec<_>>()
        );
        // A progress bar's updates repeat points of the same series; a series the
        // framework never had is noise flooding the metric list.
        let stray: std::collections::BTreeSet<&str> = points
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| !truth.iter().any(|t| t["name"] == *n))
            .collect();
        assert!(
            stray.is_empty(),
            "{name}: series the framework never had: {stray:?}"
        );
    }
    println!("{}", report.join("\n"));
}

/// A table whose header and rows arrive in separate commits of a live follow (a row per
/// epoch, printed slowly): every row is read with its columns.
#[test]
fn a_table_printed_slowly_is_read_across_commits() {
    let env = Env::new("", "0");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py --epochs 5\"",
        "command = \"printf 'epoch  train_loss  val_acc\\\\n'; for e in 1 2 3; do sleep 0.3; printf '%s  0.%s  0.9%s\\\\n' $e $((9 - e)) $e; done\"",
    );
    std::fs::write(&toml, text).unwrap();
    let v = env.json(&["run", "--terminate-after"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let job = v["job_id"].as_str().unwrap();
    let loss = env.json(&["metrics", job, "--name", "train_loss"]);
    let got: Vec<(f64, f64)> = loss
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["epoch"].as_f64().unwrap(), p["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(got, vec![(1.0, 0.8), (2.0, 0.7), (3.0, 0.6)], "{loss}");
    assert_eq!(
        env.json(&["metrics", job, "--name", "val_acc"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
