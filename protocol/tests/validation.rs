//! Each validation rule with its exact message, and decoding errors.
#![allow(clippy::unwrap_used)]

use kiln_protocol::{
    BuildRequest, ContextKind, DecodeError, MAX_PROBLEMS, MAX_REQUEST_BYTES, MAX_TEXT_BYTES,
    ValidationError, parse_build_request, parse_cancel_request, readable_id,
};
use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": "b-1",
        "images": [{
            "name": "api",
            "context": { "git": { "url": "https://github.com/acme/cart.git" } },
            "destinations": ["registry.example.com/shop/cart-api:1.2.3"]
        }]
    })
}

/// The problems `parse_build_request` reports for `base()` changed by `edit`,
/// as `path: reason` lines.
fn problems(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut v = base();
    edit(&mut v);
    match parse_build_request(&serde_json::to_vec(&v).unwrap()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn image(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    problems(|v| edit(&mut v["images"][0]))
}

#[track_caller]
#[allow(clippy::needless_pass_by_value)] // reads better at the call sites
fn one(got: Vec<String>, want: &str) {
    assert_eq!(got, vec![want.to_owned()]);
}

#[test]
fn base_is_valid() {
    assert_eq!(problems(|_| {}), Vec::<String>::new());
}

#[test]
fn a_request_with_many_problems_reports_them_all_with_paths() {
    let got = problems(|v| {
        *v = json!({
            "apiVersion": "kiln/v1",
            "kind": "BuildRequest",
            "id": "has space",
            "app": "Shop",
            "labels": { "kiln.dev/build": "x", "team": "-bad" },
            "timeoutSeconds": 0,
            "retry": { "maxAttempts": 11 },
            "images": [
                {
                    "name": "api",
                    "context": {},
                    "dockerfile": "../Dockerfile",
                    "destinations": ["registry.example.com/a:1"]
                },
                {
                    "name": "api",
                    "context": { "url": "http://example.com/c.tar.gz" },
                    "dockerfile": "Dockerfile",
                    "dockerfileInline": "FROM x",
                    "buildArgs": { "1BAD": "v" },
                    "destinations": ["Registry.Example.com/x", "registry.example.com/a:1", "registry.example.com/a:1"],
                    "platform": "linux",
                    "resources": { "cpu": "0", "memory": "lots" }
                }
            ]
        });
    });
    assert_eq!(
        got,
        [
            r#"id: "has space" contains " "; use only letters, digits, '.', '_' and '-'"#,
            r#"app: "Shop" is not a valid name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            r#"labels["kiln.dev/build"]: label keys under kiln.dev/ are reserved for Kiln; choose another prefix"#,
            r#"labels.team: "-bad" is not a valid Kubernetes label value; use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"#,
            "timeoutSeconds: 0 is out of range; use 1 to 86400 seconds",
            "retry.maxAttempts: 11 is out of range; use 1 to 10",
            "images[0].context: set exactly one of git, s3 or url",
            r#"images[0].dockerfile: "../Dockerfile" contains ".."; give a path inside the build context"#,
            r#"images[1].name: "api" is already used by images[0]; image names must be unique"#,
            r#"images[1].context.url: "http://example.com/c.tar.gz" is not an https URL; only https:// archives are fetched"#,
            "images[1]: set either dockerfile or dockerfileInline, not both",
            r#"images[1].buildArgs["1BAD"]: "1BAD" is not a valid build argument name; use letters, digits and '_', not starting with a digit (at most 256)"#,
            r#"images[1].destinations[0]: "Registry.Example.com/x" is not a valid image reference: repository names must be lowercase"#,
            r#"images[1].destinations[2]: "registry.example.com/a:1" is the same image as destinations[1]; remove the duplicate"#,
            r#"images[1].platform: "linux" is not a valid platform; use os/arch or os/arch/variant in lowercase, e.g. linux/amd64 or linux/arm64/v8"#,
            r#"images[1].resources.cpu: "0" must be greater than zero"#,
            r#"images[1].resources.memory: "lots" is not a Kubernetes quantity; write it like 512Mi or 2Gi"#,
        ]
    );
}

#[test]
fn api_version_and_kind() {
    one(
        problems(|v| v["apiVersion"] = json!("kiln/v2")),
        r#"apiVersion: "kiln/v2" is not supported; use "kiln/v1""#,
    );
    one(
        problems(|v| v["kind"] = json!("CancelRequest")),
        r#"kind: "CancelRequest" is not valid here; use "BuildRequest""#,
    );
    one(
        problems(|v| {
            v.as_object_mut().unwrap().remove("apiVersion");
        }),
        r#"apiVersion: is required; set it to "kiln/v1""#,
    );
    one(
        problems(|v| v["kind"] = json!(3)),
        r#"kind: must be the string "BuildRequest", not a number"#,
    );
    // Another version's fields are not reported as unknown: the version is.
    one(
        problems(|v| {
            v["apiVersion"] = json!("kiln/v2");
            v["newThing"] = json!(true);
        }),
        r#"apiVersion: "kiln/v2" is not supported; use "kiln/v1""#,
    );
}

#[test]
fn id() {
    one(problems(|v| v["id"] = json!("")), "id: must not be empty");
    one(
        problems(|v| v["id"] = json!("a".repeat(129))),
        "id: is 129 characters long; the limit is 128",
    );
    one(
        problems(|v| v["id"] = json!("a/b")),
        r#"id: "a/b" contains "/"; use only letters, digits, '.', '_' and '-'"#,
    );
    assert!(problems(|v| v["id"] = json!("A.b_c-1")).is_empty());
}

#[test]
fn app_and_component() {
    one(
        problems(|v| v["component"] = json!("cart_api")),
        r#"component: "cart_api" is not a valid name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"#,
    );
    assert!(problems(|v| v["app"] = json!("a".repeat(63))).is_empty());
    assert_eq!(problems(|v| v["app"] = json!("a".repeat(64))).len(), 1);
}

#[test]
fn labels() {
    one(
        problems(|v| v["labels"] = json!({"bad key": "x"})),
        r#"labels["bad key"]: "bad key" is not a valid Kubernetes label key; use an optional DNS prefix and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"#,
    );
    one(
        problems(|v| v["labels"] = json!({"team": "a".repeat(64)})),
        &format!(
            r#"labels.team: "{}" is not a valid Kubernetes label value; use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"#,
            "a".repeat(64)
        ),
    );
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    one(
        problems(|v| v["labels"] = Value::Object(many)),
        "labels: has 65 labels; the limit is 64",
    );
    assert!(
        problems(|v| v["labels"] = json!({"app.kubernetes.io/part-of": "shop", "empty": ""}))
            .is_empty()
    );
}

#[test]
fn timeout_and_retry() {
    one(
        problems(|v| v["timeoutSeconds"] = json!(86_401)),
        "timeoutSeconds: 86401 is out of range; use 1 to 86400 seconds",
    );
    one(
        problems(|v| v["retry"] = json!({"maxAttempts": 0})),
        "retry.maxAttempts: 0 is out of range; use 1 to 10",
    );
    assert!(problems(|v| v["retry"] = json!({})).is_empty());
    assert!(problems(|v| v["timeoutSeconds"] = json!(86_400)).is_empty());
}

#[test]
fn images_count() {
    one(
        problems(|v| v["images"] = json!([])),
        "images: at least one image is required",
    );
    let img = base()["images"][0].clone();
    let images: Vec<Value> = (0..33)
        .map(|i| {
            let mut im = img.clone();
            im["name"] = json!(format!("i{i}"));
            im
        })
        .collect();
    one(
        problems(|v| v["images"] = Value::Array(images)),
        "images: has 33 images; the limit is 32, split the build",
    );
}

#[test]
fn image_name() {
    one(
        image(|i| i["name"] = json!("Api")),
        r#"images[0].name: "Api" is not a valid name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"#,
    );
}

#[test]
fn context_exactly_one() {
    one(
        image(|i| {
            i["context"] = json!({
                "git": { "url": "https://github.com/a/b.git" },
                "s3": { "bucket": "bkt", "key": "k.tar.gz" }
            });
        }),
        "images[0].context: set exactly one of git, s3 or url, not git and s3",
    );
}

#[test]
fn git_context() {
    let git = |g: Value| image(move |i| i["context"] = json!({ "git": g }));
    for ok in [
        "https://github.com/acme/cart.git",
        "https://gitlab.example.com:8443/group/sub/repo",
    ] {
        assert!(git(json!({"url": ok})).is_empty(), "{ok}");
    }
    // Issue 10: no key can be supplied, so ssh and scp forms never work.
    let no_ssh = "Kiln mounts no SSH key or known_hosts into the build, so the clone could never authenticate; use the https:// URL of the repository (the tenant's git Secret gives the credentials)";
    one(
        git(json!({"url": "ssh://git@github.com/acme/cart.git"})),
        &format!(
            r#"images[0].context.git.url: "ssh://***@github.com/acme/cart.git" is an SSH URL; {no_ssh}"#
        ),
    );
    one(
        git(json!({"url": "git@github.com:acme/cart.git"})),
        &format!(
            r#"images[0].context.git.url: "git@github.com:acme/cart.git" is an SSH URL; {no_ssh}"#
        ),
    );
    one(
        git(json!({"url": "http://github.com/a/b.git"})),
        r#"images[0].context.git.url: "http://github.com/a/b.git" uses an unencrypted protocol; use https://"#,
    );
    one(
        git(json!({"url": "https://user:tok@github.com/a/b.git"})),
        "images[0].context.git.url: credentials must not be embedded in the URL; the tenant's git Secret provides them",
    );
    one(
        git(json!({"url": "https://github.com"})),
        r#"images[0].context.git.url: "https://github.com" has no repository path; use https://host/owner/repo.git"#,
    );
    one(
        git(json!({"url": "file:///etc"})),
        r#"images[0].context.git.url: "file:///etc" is not a supported git URL; use https://host/owner/repo.git"#,
    );
    one(
        git(json!({"url": "https://github.com/a b"})),
        r#"images[0].context.git.url: "https://github.com/a b" contains whitespace or a control character"#,
    );
    one(
        git(json!({"url": "https://github.com/a/b", "ref": "--upload-pack=x"})),
        r#"images[0].context.git.ref: "--upload-pack=x" is not a valid git ref; use a branch, tag or ref name such as main, v1.2.3 or refs/heads/main, without '#'"#,
    );
    one(
        git(json!({"url": "https://github.com/a/b", "commit": "XYZ"})),
        r#"images[0].context.git.commit: "XYZ" is not a full commit hash; give all 40 lowercase hex digits (the executor checks out no abbreviated commit)"#,
    );
    // Issue 12, finding 2: pkg/buildcontext/git.go checks a commit out with
    // `plumbing.NewHash`, which zero-pads a short one.
    one(
        git(json!({"url": "https://github.com/a/b", "commit": "9fceb02"})),
        r#"images[0].context.git.commit: "9fceb02" is not a full commit hash; give all 40 lowercase hex digits (the executor checks out no abbreviated commit)"#,
    );
    assert!(
        git(json!({"url": "https://github.com/a/b", "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8"}))
            .is_empty()
    );
    // The executor splits its git context on '#'.
    one(
        git(json!({"url": "https://github.com/a/b", "ref": "feature#2"})),
        r#"images[0].context.git.ref: "feature#2" is not a valid git ref; use a branch, tag or ref name such as main, v1.2.3 or refs/heads/main, without '#'"#,
    );
    one(
        git(json!({"url": "https://github.com/a/b", "subPath": "svc#2"})),
        r#"images[0].context.git.subPath: "svc#2" contains '#', which the executor reads as a ref delimiter; rename the path"#,
    );
    // Issue 18, item 7: a '#' in the URL shifts the executor's fields, so
    // `repo#evil` would be cloned at ref `evil` and the pinned commit
    // (shown in the plan and the events) would be read as a ref, or ignored.
    one(
        git(
            json!({"url": "https://github.com/a/b#refs/heads/evil", "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8"}),
        ),
        r#"images[0].context.git.url: "https://github.com/a/b#refs/heads/evil" contains '#', which the executor reads as the start of the ref and commit fields; remove it and give the branch in ref and the commit in commit"#,
    );
    one(
        git(json!({"url": "https://github.com/a/b#"})),
        r#"images[0].context.git.url: "https://github.com/a/b#" contains '#', which the executor reads as the start of the ref and commit fields; remove it and give the branch in ref and the commit in commit"#,
    );
    one(
        git(json!({"url": "https://github.com/a/b", "subPath": "/abs"})),
        r#"images[0].context.git.subPath: "/abs" is an absolute path; give a path relative to the build context"#,
    );
}

#[test]
fn s3_context() {
    let s3 = |s: Value| image(move |i| i["context"] = json!({ "s3": s }));
    assert!(s3(json!({"bucket": "build-contexts", "key": "a/b.tar.gz", "region": "eu-west-1", "endpoint": "http://minio:9000"})).is_empty());
    one(
        s3(json!({"bucket": "Bk", "key": "k"})),
        r#"images[0].context.s3.bucket: "Bk" is not a valid bucket name; use 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"#,
    );
    one(
        s3(json!({"bucket": "bkt", "key": ""})),
        "images[0].context.s3.key: must not be empty; give the object key of the context archive",
    );
    one(
        s3(json!({"bucket": "bkt", "key": "k", "region": "EU"})),
        r#"images[0].context.s3.region: "EU" is not a valid region; use lowercase letters, digits and '-', e.g. eu-west-1"#,
    );
    one(
        s3(json!({"bucket": "bkt", "key": "k", "endpoint": "minio:9000"})),
        r#"images[0].context.s3.endpoint: "minio:9000" is not an http(s) URL; write it like https://minio.example.com"#,
    );
}

#[test]
fn url_context() {
    let url = |u: &str| image(|i| i["context"] = json!({ "url": u }));
    assert!(url("https://example.com/ctx.tar.gz").is_empty());
    assert!(url("https://example.com/ctx.tgz?sig=abc").is_empty());
    one(
        url("https://example.com/ctx.zip"),
        r#"images[0].context.url: "https://example.com/ctx.zip" does not name a .tar.gz or .tgz archive; Kaniko needs a gzipped tarball"#,
    );
    one(
        url("https://u:p@example.com/ctx.tgz"),
        "images[0].context.url: credentials must not be embedded in the URL; use a presigned URL instead",
    );
}

#[test]
fn dockerfile() {
    // Neither is fine: the default `Dockerfile` is used.
    let req = parse_build_request(&serde_json::to_vec(&base()).unwrap()).unwrap();
    assert_eq!(req.images[0].dockerfile_path(), "Dockerfile");
    one(
        image(|i| i["dockerfile"] = json!("/Dockerfile")),
        r#"images[0].dockerfile: "/Dockerfile" is an absolute path; give a path relative to the build context"#,
    );
    one(
        image(|i| i["dockerfile"] = json!("a\u{0}b")),
        r#"images[0].dockerfile: "a\u0000b" contains a control character; remove it"#,
    );
    one(
        image(|i| i["dockerfile"] = json!("")),
        "images[0].dockerfile: must not be empty",
    );
    one(
        image(|i| i["dockerfileInline"] = json!("  \n")),
        "images[0].dockerfileInline: must not be empty; give the Dockerfile template",
    );
}

#[test]
fn template_args() {
    one(
        image(|i| i["templateArgs"] = json!({"x": 1})),
        "images[0].templateArgs: templateArgs only apply to dockerfileInline; remove them or use dockerfileInline",
    );
    one(
        image(|i| {
            i["dockerfileInline"] = json!("FROM {{ x }}");
            i["templateArgs"] = json!({"bad-name": 1});
        }),
        r#"images[0].templateArgs["bad-name"]: "bad-name" is not a valid template variable name; use letters, digits and '_', not starting with a digit (at most 256)"#,
    );
}

#[test]
fn build_args() {
    one(
        image(|i| i["buildArgs"] = json!({"V": "x".repeat(32 * 1024 + 1)})),
        "images[0].buildArgs.V: the value is 32769 bytes; the limit is 32768",
    );
    let many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("A{i}"), json!("v"))).collect();
    one(
        image(|i| i["buildArgs"] = Value::Object(many)),
        "images[0].buildArgs: has 129 entries; the limit is 128",
    );
}

#[test]
fn target() {
    one(
        image(|i| i["target"] = json!("1st")),
        r#"images[0].target: "1st" is not a valid build stage name; use a letter followed by letters, digits, '_', '.' or '-' (at most 128)"#,
    );
}

#[test]
fn destinations() {
    one(
        image(|i| i["destinations"] = json!([])),
        "images[0].destinations: at least one destination is required",
    );
    let nine: Vec<String> = (0..9).map(|n| format!("r.example.com/a:{n}")).collect();
    one(
        image(|i| i["destinations"] = json!(nine)),
        "images[0].destinations: has 9 destinations; the limit is 8",
    );
    one(
        image(|i| {
            i["destinations"] = json!([
                "r.example.com/a@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ]);
        }),
        r#"images[0].destinations[0]: "r.example.com/a@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" is not a valid image reference: a destination must not carry a digest (@sha256:...); push targets are tags"#,
    );
    // Duplicates are found after normalisation.
    one(
        image(|i| i["destinations"] = json!(["alpine", "docker.io/library/alpine:latest"])),
        r#"images[0].destinations[1]: "docker.io/library/alpine:latest" is the same image as destinations[0]; remove the duplicate"#,
    );
    one(
        image(|i| i["destinations"] = json!(["not a ref"])),
        r#"images[0].destinations[0]: "not a ref" is not a valid image reference: expected [registry/]repository[:tag][@digest], e.g. registry.example.com/team/app:1.0"#,
    );
}

#[test]
fn platform_and_resources() {
    assert!(
        image(|i| {
            i["platform"] = json!("linux/arm64/v8");
            i["resources"] = json!({"cpu": "250m", "memory": "1.5Gi"});
        })
        .is_empty()
    );
    one(
        image(|i| i["platform"] = json!("Linux/AMD64")),
        r#"images[0].platform: "Linux/AMD64" is not a valid platform; use os/arch or os/arch/variant in lowercase, e.g. linux/amd64 or linux/arm64/v8"#,
    );
    one(
        image(|i| i["resources"] = json!({"memory": "-1Gi"})),
        r#"images[0].resources.memory: "-1Gi" is not a Kubernetes quantity; write it like 512Mi or 2Gi"#,
    );
}

#[test]
fn platforms() {
    assert!(
        image(|i| {
            i["platforms"] = json!(["linux/amd64", "linux/arm64/v8"]);
            i["destinations"] = json!(["r.example.com/a:1", "localhost:5000/b:v2"]);
        })
        .is_empty()
    );
    one(
        image(|i| i["platforms"] = json!(["linux/amd64"])),
        "images[0].platforms: has 1 platforms; give 2 to 8 (one platform: use platform)",
    );
    one(
        image(|i| i["platforms"] = json!([])),
        "images[0].platforms: has 0 platforms; give 2 to 8 (one platform: use platform)",
    );
    one(
        image(|i| i["platforms"] = json!(["linux/amd64", "linux/amd64"])),
        r#"images[0].platforms[1]: "linux/amd64" is already platforms[0]; platforms must be distinct"#,
    );
    one(
        image(|i| i["platforms"] = json!(["linux/amd64", "arm64"])),
        r#"images[0].platforms[1]: "arm64" is not a valid platform; use os/arch or os/arch/variant in lowercase, e.g. linux/amd64 or linux/arm64/v8"#,
    );
    one(
        image(|i| {
            i["platforms"] = json!(["linux/amd64", "linux/arm64"]);
            i["platform"] = json!("linux/amd64");
        }),
        "images[0].platforms: set either platform or platforms, not both; one platform goes in platform",
    );
    one(
        image(|i| {
            i["platforms"] = json!(["linux/amd64", "linux/arm64"]);
            i["destinations"] = json!(["r.example.com/a"]);
        }),
        r#"images[0].destinations[0]: "r.example.com/a": with platforms, every destination must name its tag (registry/repo:tag): the per-platform tags are derived from it"#,
    );
    let long = format!("r.example.com/a:{}", "t".repeat(120));
    let got = image(|i| {
        i["platforms"] = json!(["linux/amd64", "linux/arm64/v8"]);
        i["destinations"] = json!([long]);
    });
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("images[0].destinations[0]: "), "{got:?}");
    assert!(
        got[0].ends_with("-linux-arm64-v8 would be 135 characters; tags are at most 128"),
        "{got:?}"
    );
}

#[test]
fn structural_errors_carry_the_json_path() {
    one(
        image(|i| {
            let ctx = i["context"].take();
            i.as_object_mut().unwrap().remove("context");
            i["contxt"] = ctx;
        }),
        "images[0].contxt: unknown field `contxt`, expected one of `name`, `context`, `dockerfile`, `dockerfileInline`, `templateArgs`, `buildArgs`, `secrets`, `target`, `destinations`, `platform`, `platforms`, `cache`, `resources` at line 1 column 54",
    );
    one(
        problems(|v| v["timeoutSeconds"] = json!("60")),
        "timeoutSeconds: invalid type: string \"60\", expected u64 at line 1 column 225",
    );
    one(
        image(|i| {
            i.as_object_mut().unwrap().remove("destinations");
        }),
        "images[0]: missing field `destinations` at line 1 column 120",
    );
}

#[test]
fn decode_errors() {
    let big = vec![b' '; MAX_REQUEST_BYTES + 1];
    let e = parse_build_request(&big).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: MAX_REQUEST_BYTES + 1,
            limit: MAX_REQUEST_BYTES
        }
    );
    assert_eq!(
        e.to_string(),
        "$: the request is 1048577 bytes; the limit is 1048576"
    );

    let e = parse_build_request(b"{\"id\": ").unwrap_err();
    assert_eq!(
        e.errors(),
        [ValidationError::new(
            "$",
            "the request is not valid JSON: EOF while parsing a value at line 1 column 7"
        )]
    );
    assert!(matches!(e, DecodeError::NotJson(_)));

    let e = parse_build_request(b"[1]").unwrap_err();
    assert_eq!(
        e.to_string(),
        "$: the request must be a JSON object, not an array"
    );

    // serde would read a struct from an array of its fields; the contract says objects.
    let mut v = base();
    v["images"][0]["context"] = json!([null, null, "https://x.example.com/c.tgz"]);
    let e = parse_build_request(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "images[0].context: must be a JSON object, not an array"
    );

    let mut dup = serde_json::to_string(&base()).unwrap();
    dup.insert_str(1, r#""kind":"BuildRequest","#);
    let e = parse_build_request(dup.as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "$: duplicate field `kind` at line 1 column 210"
    );
    assert!(!e.errors().is_empty());
}

#[test]
fn cancel_requests() {
    let c = parse_cancel_request(
        br#"{"apiVersion":"kiln/v1","kind":"CancelRequest","id":"b-1","reason":"superseded"}"#,
    )
    .unwrap();
    assert_eq!(c.id, "b-1");
    let e = parse_cancel_request(br#"{"apiVersion":"kiln/v1","kind":"BuildRequest","id":"b-1"}"#)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"kind: "BuildRequest" is not valid here; use "CancelRequest""#
    );
    let e = parse_cancel_request(
        br#"{"apiVersion":"kiln/v1","kind":"CancelRequest","id":"b 1","why":"x"}"#,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("why: unknown field `why`"), "{e}");
}

#[test]
fn readable_ids() {
    assert_eq!(
        readable_id(br#"{"id":"b-1","junk":[1,2,{"x":null}]}"#),
        Some("b-1".into())
    );
    assert_eq!(
        readable_id(br#"{"apiVersion":"kiln/v9","id":"b-1"}"#),
        Some("b-1".into())
    );
    assert_eq!(readable_id(br#"{"id":"b 1"}"#), None);
    assert_eq!(readable_id(br#"{"id":5}"#), None);
    assert_eq!(readable_id(br#"{"id":"b-1""#), None);
    assert_eq!(readable_id(br#"["b-1"]"#), None);
    assert_eq!(readable_id(b"\xff\xfe"), None);
    // Oversized requests still get their id read, for the rejected event.
    let mut big = br#"{"id":"b-1","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', MAX_REQUEST_BYTES));
    big.extend(br#""}"#);
    assert_eq!(readable_id(&big), Some("b-1".into()));
}

#[test]
fn accessors() {
    let mut v: BuildRequest = serde_json::from_value(base()).unwrap();
    assert_eq!(v.max_attempts(), None);
    v.retry = Some(kiln_protocol::RetrySpec {
        max_attempts: Some(3),
    });
    assert_eq!(v.max_attempts(), Some(3));
    assert!(matches!(
        v.images[0].context.kind(),
        Some(ContextKind::Git(g)) if g.url == "https://github.com/acme/cart.git"
    ));
    v.images[0].context.url = Some("https://x/y.tgz".into());
    assert_eq!(v.images[0].context.kind(), None);
}

#[test]
fn serialised_requests_are_tidy() {
    let req = parse_build_request(&serde_json::to_vec(&base()).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&req).unwrap(), base());
}

/// Issue 10: a reason that quotes a presigned URL travels in
/// `build.rejected`, the `kiln-error` header and the worker log: its query
/// string (X-Amz-Credential, X-Amz-Signature) is masked.
#[test]
fn reasons_quoting_urls_are_masked() {
    let got = image(|i| {
        i["context"] = json!({ "url": "https://b.s3.amazonaws.com/ctx.zip?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101&X-Amz-Signature=0123456789abcdef" });
    });
    one(
        got,
        r#"images[0].context.url: "https://b.s3.amazonaws.com/ctx.zip?***" does not name a .tar.gz or .tgz archive; Kaniko needs a gzipped tarball"#,
    );
}

/// Issue 18, item 3: a request just under the size limit made of ~80,000
/// invalid label keys was answered with every problem (a 28.5 MB
/// `build.rejected`). Now the rejection lists the first `MAX_PROBLEMS` and
/// counts the rest, and renders to at most 64 KiB.
#[test]
fn a_megabyte_of_bad_labels_gets_a_bounded_rejection() {
    let mut v = base();
    // `"-000001":"",` is 13 bytes: a valid JSON key, an invalid label key
    // (leading '-').
    let room = MAX_REQUEST_BYTES - serde_json::to_vec(&v).unwrap().len() - 64;
    let n = room / 13;
    v["labels"] = (0..n).map(|i| (format!("-{i:06}"), json!(""))).collect();
    let bytes = serde_json::to_vec(&v).unwrap();
    assert!(bytes.len() <= MAX_REQUEST_BYTES, "{}", bytes.len());
    assert!(n >= 80_000, "only {n} labels");

    let started = std::time::Instant::now();
    let Err(DecodeError::Invalid(errs)) = parse_build_request(&bytes) else {
        panic!("a request of bad labels was not refused as invalid")
    };
    let took = started.elapsed();
    // Every bad key is counted, one "too many labels" besides.
    assert_eq!(errs.len(), n + 1);
    assert_eq!(errs.iter().count(), MAX_PROBLEMS);
    let listed = DecodeError::Invalid(errs.clone()).errors();
    assert_eq!(listed.len(), MAX_PROBLEMS + 1);
    assert_eq!(
        listed[MAX_PROBLEMS].to_string(),
        format!("$: … and {} more problems", n + 1 - MAX_PROBLEMS)
    );
    let rendered = errs.to_string();
    assert!(rendered.len() <= 64 * 1024, "{} bytes", rendered.len());
    assert!(rendered.starts_with("labels: has "), "{rendered}");
    // As the worker writes it into `build.rejected`: bounded again.
    let message = listed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    assert!(kiln_protocol::bounded(&message, MAX_TEXT_BYTES).len() <= MAX_TEXT_BYTES);
    // Generous: a debug build on a shared machine takes ~0.1 s; building and
    // masking 80,000 reasons took seconds.
    assert!(took.as_secs() < 5, "validation took {took:?}");
}

/// The cap applies to what validation lists, whatever the mix of problems.
#[test]
fn rejections_list_at_most_max_problems() {
    let got = problems(|v| {
        let bad: serde_json::Map<String, Value> =
            (0..60).map(|i| (format!("t{i}"), json!("-bad"))).collect();
        v["labels"] = Value::Object(bad);
    });
    assert_eq!(got.len(), MAX_PROBLEMS + 1);
    assert_eq!(got[MAX_PROBLEMS], "$: … and 10 more problems");
}

/// Issue 18 item 12: `secrets` on an image, each problem at its path; the
/// schema and the validator agree.
#[test]
fn build_secrets() {
    let ok = image(|i| {
        i["secrets"] = json!({
            "npm": {"secret": "ci-tokens", "key": ".npmrc"},
            "gh.token-2": {"secret": "github", "key": "token"},
        });
    });
    assert_eq!(ok, Vec::<String>::new());
    let got = image(|i| {
        i["secrets"] = json!({
            "..": {"secret": "Bad_Name", "key": "..data"},
            "a/b": {"secret": "ok", "key": "."},
        });
    });
    assert_eq!(
        got,
        [
            r#"images[0].secrets[".."]: ".." is not a valid secret id; use 1-64 of letters, digits, '_', '.' and '-', not "." or "..""#,
            r#"images[0].secrets[".."].secret: "Bad_Name" is not a valid Secret name (lowercase letters, digits, '-' and '.', at most 253)"#,
            r#"images[0].secrets[".."].key: "..data" is not a valid Secret key (1-253 of letters, digits, '-', '_' and '.', not "." and not starting with "..")"#,
            r#"images[0].secrets["a/b"]: "a/b" is not a valid secret id; use 1-64 of letters, digits, '_', '.' and '-', not "." or "..""#,
            r#"images[0].secrets["a/b"].key: "." is not a valid Secret key (1-253 of letters, digits, '-', '_' and '.', not "." and not starting with "..")"#,
        ]
    );
    let many: serde_json::Map<String, Value> = (0..17)
        .map(|n| (format!("s{n}"), json!({"secret": "s", "key": "k"})))
        .collect();
    one(
        image(|i| i["secrets"] = Value::Object(many)),
        "images[0].secrets: has 17 entries; the limit is 16",
    );
    let unknown = image(|i| {
        i["secrets"] = json!({"npm": {"secret": "s", "key": "k", "value": "hunter2"}});
    });
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown[0].contains("value"), "{unknown:?}");
    assert!(!unknown[0].contains("hunter2"), "{unknown:?}");
}
