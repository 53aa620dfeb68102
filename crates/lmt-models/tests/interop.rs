//! PyTorch interop: state_dicts saved from the PyTorch mirrors in `bench/pytorch/models.py` (by
//! `scripts/make-interop-fixture.py`) load by name into our models and give PyTorch's logits; our names and
//! shapes are exactly PyTorch's keys, so the reverse direction loads too.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use lmt_models::{Classifier, KolterWong, WideResNet, WideResNetCfg};

fn fixture(name: &str) -> std::collections::HashMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

/// Every variable and buffer of the model, by name.
fn state(vm: &VarMap, model: &dyn Classifier) -> BTreeMap<String, Var> {
    let mut m: BTreeMap<String, Var> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    m.extend(model.buffers());
    m
}

fn check(name: &str, vm: &VarMap, model: &dyn Classifier) {
    let torch = fixture(name);
    let ours = state(vm, model);
    // Same names, same shapes, both ways.
    let torch_names: Vec<&String> = {
        let mut v: Vec<&String> = torch.keys().collect();
        v.sort();
        v
    };
    assert_eq!(
        torch_names,
        ours.keys().collect::<Vec<_>>(),
        "{name}: names differ"
    );
    for (k, v) in &ours {
        assert_eq!(torch[k].dims(), v.dims(), "{name}: {k}");
        v.set(&torch[k]).unwrap();
    }
    let io = fixture(&format!("{name}_io"));
    let ours = model.eval_logits(&io["inputs"]).unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        ours.flatten_all().unwrap().to_vec1().unwrap(),
        io["logits"].flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5 * scale + 1e-6,
            "{name}: ours {x} vs PyTorch {y}"
        );
    }
}

#[test]
fn kolter_wong_loads_a_pytorch_state_dict_and_matches_its_logits() {
    let vm = VarMap::new();
    let model = KolterWong::new(&vm, 0, &Device::Cpu).unwrap();
    check("kolter_wong", &vm, &model);
}

#[test]
fn wide_resnet_loads_a_pytorch_state_dict_and_matches_its_logits() {
    let vm = VarMap::new();
    let cfg = WideResNetCfg {
        depth: 10,
        width: 1,
        ..Default::default()
    };
    let model = WideResNet::new(cfg, &vm, 0, &Device::Cpu).unwrap();
    check("wrn_10_1", &vm, &model);
}

#[test]
fn four_c_three_f_with_minmax_loads_a_pytorch_state_dict_and_matches_its_logits() {
    let vm = VarMap::new();
    let model =
        lmt_models::FourCThreeF::new(&vm, 0, lmt_models::Act::MinMax, &Device::Cpu).unwrap();
    check("four_c_three_f_minmax", &vm, &model);
}
