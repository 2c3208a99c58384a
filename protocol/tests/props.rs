//! Property tests: decoding never panics, valid requests round-trip (and
//! satisfy the committed schema), names are always valid and injective,
//! request fingerprints ignore how a request is written but not what it
//! says, `request.rejected` ids follow the message body, bounded text
//! never exceeds its bound, a `#` anywhere in a git URL is refused, and
//! tenant routing keys are confined by the tenant's read permission.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use kiln_protocol::{
    BuildContext, BuildRequest, GitContext, ImageSpec, REQUEST_HASH_HEX, Resources, RetrySpec,
    S3Context, configmap_name, is_dns1123_label, is_label_value, label_value, parse_build_request,
    parse_cancel_request, pod_name, readable_id, request_fingerprint, request_rejected_id,
};
use kiln_protocol::{Level, Phase, Tenant, bounded, tenant_read_permission, tenant_routing_key};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("kiln/v1".into())),
        Just(Value::String("BuildRequest".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            "[a-zA-Z]{0,8}",
            Just("apiVersion".to_owned()),
            Just("kind".to_owned()),
            Just("id".to_owned()),
            Just("images".to_owned()),
            Just("context".to_owned()),
            Just("git".to_owned()),
            Just("destinations".to_owned()),
        ];
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn context() -> impl Strategy<Value = BuildContext> {
    prop_oneof![
        (
            prop_oneof![
                "https://[a-z]{1,8}\\.example\\.com/[a-z]{1,8}/[a-z]{1,8}\\.git",
                "https://[a-z]{1,8}\\.com/[a-z]{1,8}/[a-z]{1,8}",
            ],
            proptest::option::of("(main|v[0-9]\\.[0-9]|refs/heads/[a-z]{1,8})"),
            proptest::option::of("[0-9a-f]{40}"),
            proptest::option::of("[a-z]{1,8}(/[a-z]{1,8})?"),
        )
            .prop_map(|(url, git_ref, commit, sub_path)| BuildContext {
                git: Some(GitContext {
                    url,
                    git_ref,
                    commit,
                    sub_path,
                }),
                ..BuildContext::default()
            }),
        (
            "[a-z0-9][a-z0-9-]{1,10}[a-z0-9]",
            "[a-z]{1,8}/[a-z0-9._-]{1,12}\\.tar\\.gz",
            proptest::option::of("[a-z]{2}-[a-z]{4,8}-[1-9]"),
            proptest::option::of("https?://[a-z]{1,8}(:[0-9]{2,4})?"),
        )
            .prop_map(|(bucket, key, region, endpoint)| BuildContext {
                s3: Some(S3Context {
                    bucket,
                    key,
                    region,
                    endpoint,
                }),
                ..BuildContext::default()
            }),
        "https://[a-z]{1,8}\\.example\\.com/[a-z]{1,8}\\.(tar\\.gz|tgz)(\\?sig=[a-z0-9]{1,8})?"
            .prop_map(|u| BuildContext {
                url: Some(u),
                ..BuildContext::default()
            }),
    ]
}

fn image() -> impl Strategy<Value = ImageSpec> {
    let dockerfile = prop_oneof![
        Just((None, None, BTreeMap::new())),
        "[A-Za-z0-9_.-]{1,8}(/[A-Za-z0-9_-]{1,8})?"
            .prop_filter("not ..", |p| !p.split('/').any(|s| s == ".."))
            .prop_map(|p| (Some(p), None, BTreeMap::new())),
        (
            "FROM [a-z]{1,8}\n(RUN [ -~]{1,20}\n)?",
            btree_map("[a-z_][a-z0-9_]{0,8}", json_value(), 0..3),
        )
            .prop_map(|(i, args)| (None, Some(i), args)),
    ];
    (
        (
            context(),
            dockerfile,
            btree_map("[A-Z_][A-Z0-9_]{0,8}", "[^\u{0}]{0,16}", 0..4),
            proptest::option::of("[a-z][a-z0-9_-]{0,8}"),
        ),
        vec(
            "[a-z0-9]{1,6}\\.example\\.com(:[0-9]{2,4})?/[a-z0-9]{1,6}(/[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?)?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}",
            1..4,
        ),
        (
            proptest::option::of("linux/(amd64|arm64(/v8)?|arm/v7|s390x)"),
            proptest::option::of(any::<bool>()),
            proptest::option::of(
                (
                    proptest::option::of("[1-9][0-9]{0,2}m?"),
                    proptest::option::of("[1-9][0-9]{0,3}(Mi|Gi|M|G)?"),
                )
                    .prop_map(|(cpu, memory)| Resources {
                        cpu,
                        memory,
                        ephemeral_storage: None,
                    }),
            ),
        ),
    )
        .prop_map(
            |((context, (dockerfile, dockerfile_inline, template_args), build_args, target), mut destinations, (platform, cache, resources))| {
                destinations.sort();
                destinations.dedup();
                ImageSpec {
                    name: String::new(),
                    context,
                    dockerfile,
                    dockerfile_inline,
                    template_args,
                    build_args,
                    secrets: std::collections::BTreeMap::new(),
                    target,
                    destinations,
                    platform,
                    platforms: None,
                    cache,
                    resources,
                }
            },
        )
}

fn build_request() -> impl Strategy<Value = BuildRequest> {
    (
        "[A-Za-z0-9._-]{1,40}",
        proptest::option::of(dns_label()),
        proptest::option::of(dns_label()),
        btree_map(
            "([a-z]{1,6}\\.io/)?[a-z][a-z0-9_.-]{0,8}[a-z0-9]",
            "([A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?)?",
            0..4,
        ),
        proptest::option::of(1..=86_400u64),
        proptest::option::of(
            proptest::option::of(1..=10u32).prop_map(|max_attempts| RetrySpec { max_attempts }),
        ),
        vec((dns_label(), image()), 1..4),
    )
        .prop_map(
            |(id, app, component, labels, timeout_seconds, retry, images)| {
                let images = images
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, mut image))| {
                        // unique names: suffix the index
                        image.name = format!("{}-{i}", &name[..name.len().min(50)]);
                        image
                    })
                    .collect();
                BuildRequest {
                    api_version: "kiln/v1".into(),
                    kind: "BuildRequest".into(),
                    id,
                    app,
                    component,
                    labels,
                    timeout_seconds,
                    retry,
                    images,
                }
            },
        )
}

/// `v` as JSON with every object's keys in reverse order and spaces
/// around the punctuation: the same request, written differently.
fn reversed_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| b.cmp(a));
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{} : {}", Value::String(k.clone()), reversed_json(&map[k])))
                .collect();
            format!("{{ {} }}", fields.join(" , "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(reversed_json).collect();
            format!("[ {} ]", items.join(" , "))
        }
        scalar => scalar.to_string(),
    }
}

static BUILD_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/build-request.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = parse_build_request(&bytes);
        let _ = parse_cancel_request(&bytes);
        let _ = readable_id(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Err(e) = parse_build_request(&bytes) {
            prop_assert!(!e.errors().is_empty());
        }
        if let Err(e) = parse_cancel_request(&bytes) {
            prop_assert!(!e.errors().is_empty());
        }
        let _ = readable_id(&bytes);
    }

    /// A valid request with one field replaced by junk is decoded or
    /// rejected with a reason, never a panic.
    #[test]
    fn corrupted_requests_never_panic(req in build_request(), junk in json_value(), which in 0usize..8) {
        let mut v = serde_json::to_value(&req).unwrap();
        let target = match which {
            0 => &mut v["id"],
            1 => &mut v["images"],
            2 => &mut v["images"][0],
            3 => &mut v["images"][0]["context"],
            4 => &mut v["images"][0]["context"]["git"],
            5 => &mut v["images"][0]["destinations"],
            6 => &mut v["labels"],
            _ => &mut v["retry"],
        };
        *target = junk;
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Err(e) = parse_build_request(&bytes) {
            prop_assert!(!e.errors().is_empty());
            prop_assert!(e.errors().iter().all(|e| !e.path.is_empty() && !e.reason.is_empty()));
        }
        prop_assert_eq!(readable_id(&bytes), v["id"].as_str().filter(|id| kiln_protocol::is_valid_build_id(id)).map(str::to_owned));
    }

    #[test]
    fn valid_requests_round_trip(req in build_request()) {
        if let Err(e) = req.validate() {
            return Err(TestCaseError::fail(format!("generated request invalid:\n{e}\n{req:#?}")));
        }
        let bytes = serde_json::to_vec(&req).unwrap();
        let back = parse_build_request(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &req);
        prop_assert_eq!(readable_id(&bytes), Some(req.id.clone()));

        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let problems: Vec<String> = BUILD_SCHEMA.iter_errors(&value).map(|e| format!("{}: {e}", e.instance_path())).collect();
        prop_assert!(problems.is_empty(), "valid request fails the schema: {:?}", problems);
    }

    #[test]
    fn names_are_dns_labels(build in ".{0,200}", image in ".{0,80}", attempt in any::<u32>()) {
        for name in [pod_name(&build, &image, attempt), configmap_name(&build, &image, attempt)] {
            prop_assert!(is_dns1123_label(&name), "{:?}", name);
            prop_assert!(name.len() <= 63);
        }
        prop_assert_eq!(pod_name(&build, &image, attempt), pod_name(&build, &image, attempt));
    }

    /// Small alphabets make sanitising collisions likely: distinct inputs
    /// must still get distinct names.
    #[test]
    fn distinct_inputs_get_distinct_names(
        a in ("[a-cA-C.-]{0,5}", "[a-c-]{0,4}", 0u32..3),
        b in ("[a-cA-C.-]{0,5}", "[a-c-]{0,4}", 0u32..3),
    ) {
        prop_assume!(a != b);
        prop_assert_ne!(pod_name(&a.0, &a.1, a.2), pod_name(&b.0, &b.1, b.2));
        prop_assert_ne!(configmap_name(&a.0, &a.1, a.2), configmap_name(&b.0, &b.1, b.2));
    }

    #[test]
    fn long_inputs_get_distinct_names(prefix in "[a-z]{60}", a in "[a-z.]{1,4}", b in "[a-z.]{1,4}") {
        prop_assume!(a != b);
        let (x, y) = (format!("{prefix}{a}"), format!("{prefix}{b}"));
        prop_assert_ne!(pod_name(&x, "api", 1), pod_name(&y, "api", 1));
    }

    #[test]
    fn label_values_are_valid(v in ".{0,100}") {
        let l = label_value(&v);
        prop_assert!(is_label_value(&l), "{:?}", l);
        if is_label_value(&v) {
            prop_assert_eq!(l, v);
        }
    }

    #[test]
    fn fingerprints_ignore_how_the_request_is_written(req in build_request()) {
        let value = serde_json::to_value(&req).unwrap();
        let respelled = reversed_json(&value);
        let back = parse_build_request(respelled.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let fp = request_fingerprint(&req);
        prop_assert_eq!(request_fingerprint(&back), fp.clone());
        prop_assert_eq!(request_fingerprint(&req.clone()), fp.clone());
        prop_assert_eq!(fp.len(), 64);
        prop_assert!(fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn fingerprints_differ_when_the_request_does(req in build_request(), which in 0usize..5, extra in "[a-z]{1,8}") {
        let mut other = req.clone();
        match which {
            0 => other.id.push_str(&extra),
            1 => { other.labels.insert(format!("zz{extra}"), extra.clone()); }
            2 => other.images[0].destinations[0].push_str(&extra),
            3 => { other.images[0].build_args.insert(format!("ZZ_{extra}"), extra.clone()); }
            _ => {
                let n = req.max_attempts().unwrap_or(0) % 10 + 1;
                other.retry = Some(RetrySpec { max_attempts: Some(if Some(n) == req.max_attempts() { n % 10 + 1 } else { n }) });
            }
        }
        prop_assume!(other != req);
        prop_assert_ne!(request_fingerprint(&other), request_fingerprint(&req));
    }

    #[test]
    fn request_rejected_ids_follow_the_body(build in "[A-Za-z0-9._-]{1,128}", a in vec(any::<u8>(), 0..256), b in vec(any::<u8>(), 0..256)) {
        let id = request_rejected_id(&build, &a);
        prop_assert_eq!(&id, &request_rejected_id(&build, &a));
        let prefix = format!("{build}/request/");
        prop_assert!(id.starts_with(&prefix), "{}", id);
        prop_assert_eq!(id.len(), prefix.len() + REQUEST_HASH_HEX);
        if a != b {
            prop_assert_ne!(id, request_rejected_id(&build, &b));
        }
    }

    /// Any text, any bound: the result fits, is a prefix of the text (up to
    /// the note) and says how many bytes were cut.
    #[test]
    fn bounded_text_fits_and_counts_the_cut(text in ".{0,400}", max in 0usize..600) {
        let b = bounded(&text, max);
        prop_assert!(b.len() <= max);
        if text.len() <= max {
            prop_assert_eq!(b.as_ref(), text.as_str());
        } else if let Some((head, note)) = b.split_once("… (") {
            prop_assert!(text.starts_with(head));
            prop_assert_eq!(note, format!("{} bytes cut)", text.len() - head.len()));
        } else {
            prop_assert!(text.starts_with(b.as_ref()));
        }
    }

    /// Issue 18, item 7: wherever a '#' goes in an otherwise valid git URL,
    /// the request is refused, with the problem at `git.url`.
    #[test]
    fn hash_anywhere_in_a_git_url_is_refused(req in build_request(), at in any::<prop::sample::Index>()) {
        let mut req = req;
        let Some(git) = req.images[0].context.git.as_mut() else { return Ok(()) };
        let cut = at.index(git.url.len() - "https://".len()) + "https://".len();
        git.url.insert(cut, '#');
        let errs = req.validate().unwrap_err();
        prop_assert!(errs.iter().any(|e| e.path == "images[0].context.git.url"), "{}", errs);
    }

    /// A tenant's read permission admits every routing key of its own
    /// events and none of another tenant's.
    #[test]
    fn read_permissions_confine_tenants(a in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", b in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?") {
        prop_assume!(a != b);
        let (ta, tb) = (Tenant::new(a).unwrap(), Tenant::new(b).unwrap());
        let allow = regex::Regex::new(&tenant_read_permission(&ta)).unwrap();
        for (level, phase) in [(Level::Build, Phase::Succeeded), (Level::Image, Phase::Running), (Level::Request, Phase::Rejected)] {
            prop_assert!(allow.is_match(&tenant_routing_key(level, phase, &ta)));
            prop_assert!(!allow.is_match(&tenant_routing_key(level, phase, &tb)));
        }
    }
}
