use super::*;

fn child(platform: &str, media_type: &str, digest: char) -> Child {
    Child {
        platform: Platform::parse(platform).expect("platform"),
        manifest: Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 400,
        },
    }
}

#[test]
fn platforms_parse_print_and_dash() {
    let p = Platform::parse("linux/arm64/v8").expect("valid");
    assert_eq!(
        (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
        ("linux", "arm64", Some("v8"))
    );
    assert_eq!(p.to_string(), "linux/arm64/v8");
    assert_eq!(p.dashed(), "linux-arm64-v8");
    assert_eq!(platform_tag("1.2", &p), "1.2-linux-arm64-v8");
    assert_eq!(Platform::parse("linux/amd64").expect("valid").variant, None);
    for bad in [
        "",
        "linux",
        "linux/",
        "/amd64",
        "Linux/amd64",
        "a/b/c/d",
        "linux/amd64/",
        "l x/amd64",
    ] {
        assert!(Platform::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_index_is_sorted_canonical_and_stable() {
    let a = [
        child("linux/arm64", OCI_MANIFEST, 'b'),
        child("linux/amd64", OCI_MANIFEST, 'a'),
    ];
    let b = [a[1].clone(), a[0].clone()];
    let one = image_index(&a).expect("index");
    let two = image_index(&b).expect("index");
    assert_eq!(one, two, "the order of the arguments does not matter");
    assert_eq!(one.media_type, OCI_INDEX);
    let expected = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"{idx}","manifests":["#,
            r#"{{"mediaType":"{m}","digest":"sha256:{a}","size":400,"platform":{{"architecture":"amd64","os":"linux"}}}},"#,
            r#"{{"mediaType":"{m}","digest":"sha256:{b}","size":400,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
        ),
        idx = OCI_INDEX,
        m = OCI_MANIFEST,
        a = "a".repeat(64),
        b = "b".repeat(64),
    );
    assert_eq!(String::from_utf8(one.bytes).expect("utf-8"), expected);
}

#[test]
fn docker_children_make_a_manifest_list_with_variants() {
    let doc = image_index(&[
        child("linux/arm/v7", DOCKER_MANIFEST, 'c'),
        child("linux/amd64", DOCKER_MANIFEST, 'a'),
    ])
    .expect("index");
    assert_eq!(doc.media_type, DOCKER_LIST);
    let v: serde_json::Value = serde_json::from_slice(&doc.bytes).expect("json");
    assert_eq!(v["mediaType"], DOCKER_LIST);
    assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
    assert_eq!(v["manifests"][1]["platform"]["variant"], "v7");
}

#[test]
fn bad_children_are_refused_naming_them() {
    assert_eq!(image_index(&[]), Err(IndexError::NoChildren));
    let dup = image_index(&[
        child("linux/amd64", OCI_MANIFEST, 'a'),
        child("linux/amd64", OCI_MANIFEST, 'b'),
    ]);
    assert!(
        matches!(dup, Err(IndexError::DuplicatePlatform(_))),
        "{dup:?}"
    );
    let mixed = image_index(&[
        child("linux/amd64", OCI_MANIFEST, 'a'),
        child("linux/arm64", DOCKER_MANIFEST, 'b'),
    ])
    .expect_err("mixed");
    assert!(mixed.to_string().contains("linux/arm64"), "{mixed}");
    let nested = image_index(&[child("linux/amd64", OCI_INDEX, 'a')]).expect_err("index child");
    assert!(nested.to_string().contains(OCI_INDEX), "{nested}");
}

#[test]
fn child_manifests_are_read_and_indexes_refused() {
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cc","size":12}},"layers":[]}}"#
    );
    let read = read_child_manifest(m.as_bytes(), OCI_MANIFEST).expect("manifest");
    assert_eq!(read.media_type, OCI_MANIFEST);
    assert_eq!(read.config.digest, "sha256:cc");
    // No mediaType in the body (allowed for OCI): the header decides.
    let bare = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:dd","size":1}}"#;
    let read = read_child_manifest(
        bare.as_bytes(),
        &format!("{DOCKER_MANIFEST}; charset=utf-8"),
    )
    .expect("manifest");
    assert_eq!(read.media_type, DOCKER_MANIFEST);
    let index = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    let err = read_child_manifest(index.as_bytes(), OCI_INDEX).expect_err("an index");
    assert!(err.to_string().contains("not an image manifest"), "{err}");
    assert!(read_child_manifest(b"<html>", "text/html").is_err());
}

#[test]
fn config_platforms_are_compared_with_the_platform_asked() {
    let found = config_platform(br#"{"os":"linux","architecture":"arm64","variant":"v8"}"#)
        .expect("config");
    assert_eq!(found.to_string(), "linux/arm64/v8");
    let asked = |s| Platform::parse(s).expect("platform");
    assert!(platform_matches(&asked("linux/arm64"), &found));
    assert!(platform_matches(&asked("linux/arm64/v8"), &found));
    assert!(!platform_matches(&asked("linux/arm64/v9"), &found));
    assert!(!platform_matches(&asked("linux/amd64"), &found));
    let amd = config_platform(br#"{"os":"linux","architecture":"amd64"}"#).expect("config");
    assert!(!platform_matches(&asked("linux/arm64"), &amd));
    assert!(config_platform(b"not json").is_err());
}

#[test]
fn referrers_attach_an_envelope_and_join_the_tag_index_once() {
    let subject = Descriptor {
        media_type: OCI_INDEX.to_owned(),
        digest: format!("sha256:{}", "e".repeat(64)),
        size: 500,
    };
    let envelope = Descriptor {
        media_type: DSSE_ENVELOPE.to_owned(),
        digest: format!("sha256:{}", "f".repeat(64)),
        size: 900,
    };
    let doc = referrer_manifest(&subject, &envelope);
    assert_eq!(doc, referrer_manifest(&subject, &envelope), "stable bytes");
    let v: serde_json::Value = serde_json::from_slice(&doc.bytes).expect("json");
    assert_eq!(v["artifactType"], DSSE_ENVELOPE);
    assert_eq!(v["config"]["mediaType"], OCI_EMPTY);
    assert_eq!(v["layers"][0]["digest"], envelope.digest.as_str());
    assert_eq!(v["subject"]["digest"], subject.digest.as_str());
    assert_eq!(v["subject"]["mediaType"], OCI_INDEX);

    assert_eq!(
        referrers_tag(&subject.digest),
        format!("sha256-{}", "e".repeat(64))
    );
    let referrer = Descriptor {
        media_type: OCI_MANIFEST.to_owned(),
        digest: "sha256:01".to_owned(),
        size: 700,
    };
    let first = referrers_index(None, &referrer, DSSE_ENVELOPE)
        .expect("ok")
        .expect("new");
    let v: serde_json::Value = serde_json::from_slice(&first.bytes).expect("json");
    assert_eq!(v["manifests"][0]["artifactType"], DSSE_ENVELOPE);
    assert_eq!(first.media_type, OCI_INDEX);
    assert_eq!(
        referrers_index(Some(&first.bytes), &referrer, DSSE_ENVELOPE),
        Ok(None),
        "already there: nothing to push"
    );
    let other = Descriptor {
        digest: "sha256:02".to_owned(),
        ..referrer.clone()
    };
    let second = referrers_index(Some(&first.bytes), &other, "application/x-other")
        .expect("ok")
        .expect("new");
    let v: serde_json::Value = serde_json::from_slice(&second.bytes).expect("json");
    assert_eq!(v["manifests"][0]["digest"], "sha256:01");
    assert_eq!(v["manifests"][1]["artifactType"], "application/x-other");
}
