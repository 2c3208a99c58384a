//! The shape of the source tree: under `worker/src`, `protocol/src` and
//! `core/src`, no file imports another that imports it back (directly or
//! through others), and no file's non-test part is over 600 lines. Both
//! keep a file one concept a reader can take in whole; the crates'
//! boundaries (the core has no IO dependency) are the compiler's to check.
//!
//! Imports are read with a plain scan of `use` items (`crate::`, `super::`,
//! `self::` and child-module paths, braces expanded) up to the file's
//! `#[cfg(test)]` part; each path is the file of its longest prefix that is
//! a module file. Re-exports count as imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOTS: &[&str] = &["worker/src", "protocol/src", "core/src"];
const MAX_LINES: usize = 600;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir` that is not a test file.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir readable") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && name != "tests.rs"
            && !name.ends_with("_tests.rs")
        {
            out.push(path);
        }
    }
}

/// The file's lines before its `#[cfg(test)]` part (the whole file if none).
fn non_test(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .collect()
}

/// The module path of `file` under crate root `src` (`lib.rs`: empty).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under its root");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The file of module `path` under `src`, if it is one.
fn file_of(src: &Path, path: &[String]) -> Option<PathBuf> {
    if path.is_empty() {
        return Some(src.join("lib.rs")).filter(|p| p.exists());
    }
    let base = path.iter().fold(src.to_path_buf(), |p, s| p.join(s));
    [base.with_extension("rs"), base.join("mod.rs")]
        .into_iter()
        .find(|p| p.exists())
}

/// `a::{b, c::{d}, e as f}` -> (`a::b`, `b`), (`a::c::d`, `d`), (`a::e`,
/// `f`): each path with the name it is known by.
fn expand(tree: &str) -> Vec<(String, String)> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let (path, alias) = tree.split_once(" as ").unwrap_or((tree, ""));
        let path = path.trim().to_owned();
        let name = match alias.trim() {
            "" => path.rsplit("::").next().unwrap_or("").to_owned(),
            alias => alias.to_owned(),
        };
        return vec![(path, name)];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(|i| {
            expand(i)
                .into_iter()
                .map(move |(p, n)| (format!("{prefix}{p}"), n))
        })
        .collect()
}

/// The path tree of a line that starts a `use` item, and whether it is a
/// re-export.
fn use_item(line: &str) -> Option<(&str, bool)> {
    let (rest, public) = match line.strip_prefix("pub") {
        Some(r) if r.starts_with('(') => (&r[r.find(')')? + 1..], true),
        Some(r) => (r, true),
        None => (line, false),
    };
    Some((rest.trim_start().strip_prefix("use ")?, public))
}

/// One file's `use` items that name its own crate: their absolute paths,
/// and the names it re-exports (name -> path).
#[derive(Default)]
struct Uses {
    paths: Vec<Vec<String>>,
    exports: BTreeMap<String, Vec<String>>,
}

/// The `use` items of a file of module `here` that name its own crate.
fn uses(src: &Path, here: &[String], text: &str) -> Uses {
    let mut out = Uses::default();
    let mut lines = non_test(text).into_iter().map(str::trim);
    while let Some(line) = lines.next() {
        let Some((start, public)) = use_item(line) else {
            continue;
        };
        let mut tree = start.to_owned();
        while !tree.contains(';') {
            let Some(more) = lines.next() else { break };
            tree.push(' ');
            tree.push_str(more);
        }
        let tree = tree.split(';').next().unwrap_or("").replace(":: ", "::");
        for (path, name) in expand(&tree) {
            let mut segs: Vec<String> = path.split("::").map(|s| s.trim().to_owned()).collect();
            let mut module = match segs.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                Some("self") => here.to_vec(),
                Some("super") => here[..here.len().saturating_sub(1)].to_vec(),
                Some(child) if file_of(src, &[here, &[child.to_owned()]].concat()).is_some() => {
                    segs.insert(0, "self".to_owned());
                    here.to_vec()
                }
                _ => continue, // another crate
            };
            segs.remove(0);
            while segs.first().map(String::as_str) == Some("super") {
                module.pop();
                segs.remove(0);
            }
            let full = [module, segs].concat();
            if public && name != "*" {
                out.exports.insert(name, full.clone());
            }
            out.paths.push(full);
        }
    }
    out
}

/// The file that defines what `path` names: the file of its longest module
/// prefix or, when that file re-exports the next name, where it comes from.
fn resolve(src: &Path, all: &BTreeMap<PathBuf, Uses>, path: &[String], depth: u32) -> PathBuf {
    let (k, file) = (0..=path.len())
        .rev()
        .find_map(|k| file_of(src, &path[..k]).map(|f| (k, f)))
        .expect("the crate root exists");
    let exported = path
        .get(k)
        .and_then(|name| all.get(&file)?.exports.get(name))
        .filter(|_| depth < 8);
    match exported {
        Some(origin) => resolve(src, all, &[origin, &path[k + 1..]].concat(), depth + 1),
        None => file,
    }
}

/// Every file of the crate under `src`, with the files it imports.
fn crate_graph(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let all: BTreeMap<PathBuf, Uses> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("source readable");
            (f.clone(), uses(src, &module_of(src, f), &text))
        })
        .collect();
    all.iter()
        .map(|(f, u)| {
            let targets = u
                .paths
                .iter()
                .map(|p| resolve(src, &all, p, 0))
                .filter(|t| t != f)
                .collect();
            (f.clone(), targets)
        })
        .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = ROOTS
        .iter()
        .flat_map(|root| crate_graph(&repo().join(root)))
        .collect();
    // A cycle through `a` is a path from one of `a`'s imports back to `a`.
    let mut cycles = BTreeSet::new();
    for start in graph.keys() {
        let mut stack: Vec<Vec<&PathBuf>> = vec![vec![start]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = *path.last().expect("non-empty");
            for next in graph.get(last).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = path.iter().map(|p| rel(p)).collect();
                    cycles.insert(format!("{} -> {}", names.join(" -> "), rel(start)));
                } else if seen.insert(next) {
                    stack.push([path.clone(), vec![next]].concat());
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that import a file importing them back:\n  {}",
        cycles.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn no_files_non_test_part_is_over_600_lines() {
    let mut long = Vec::new();
    for root in ROOTS {
        let mut files = Vec::new();
        sources(&repo().join(root), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source readable");
            let n = non_test(&text).len();
            if n > MAX_LINES {
                long.push(format!("{} ({n} lines)", rel(&f)));
            }
        }
    }
    long.sort();
    assert!(
        long.is_empty(),
        "files whose non-test part is over {MAX_LINES} lines (split them by concept):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_scan_resolves_braces_relative_paths_and_re_exports() {
    let names = |tree: &str| -> Vec<String> {
        expand(tree)
            .into_iter()
            .map(|(p, n)| format!("{p}={n}"))
            .collect()
    };
    assert_eq!(
        names("crate::a::{b, c::{d, e}, f as g}"),
        [
            "crate::a::b=b",
            "crate::a::c::d=d",
            "crate::a::c::e=e",
            "crate::a::f=g"
        ]
    );
    let src = repo().join("core/src");
    let here = ["machine".to_owned(), "state".to_owned()];
    let text = "use super::image::{Img};\nuse crate::plan::BuildPlan;\n#[cfg(test)]\nuse crate::policy::Policy;";
    let files: BTreeSet<PathBuf> = uses(&src, &here, text)
        .paths
        .iter()
        .map(|p| resolve(&src, &BTreeMap::new(), p, 0))
        .collect();
    assert_eq!(
        files,
        BTreeSet::from([src.join("machine/image.rs"), src.join("plan.rs")])
    );
    // `crate::classify::PodView` is `pod_view.rs`'s, re-exported.
    let graph = crate_graph(&src);
    assert!(graph[&src.join("machine/pods.rs")].contains(&src.join("pod_view.rs")));
}

/// The code of `line` without its `//` comment and string literals (a plain
/// scan: enough for paths, which never sit inside either in real code).
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        if !in_str && c == '/' && line[i..].starts_with("//") {
            break;
        }
        if c == '"' && prev != '\\' {
            in_str = !in_str;
        } else if !in_str {
            out.push(c);
        }
        prev = c;
    }
    out
}

/// Which files of `worker/src` outside `home` name `client::` (a library
/// path) in their non-test code.
fn knowers(home: &str, client: &str) -> Vec<String> {
    let src = repo().join("worker/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.starts_with(src.join(home)))
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("source readable");
            non_test(&text).iter().any(|l| {
                let code = code_of(l);
                code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .any(|w| w.starts_with(&format!("{client}::")))
            })
        })
        .map(|f| rel(&f))
        .collect()
}

/// Only the store module knows Redis, only the amqp module knows lapin, only
/// the pod module knows kube and k8s-openapi, only the registry module knows
/// the registry client and the docker config reader: everything above them works
/// on Kiln's own types, so a client library can be swapped or faulted in one
/// place.
#[test]
fn each_client_library_is_known_to_one_module() {
    for (home, client) in [
        ("store", "redis"),
        ("amqp", "lapin"),
        ("pod", "kube"),
        ("pod", "k8s_openapi"),
        ("registry", "oci_client"),
        ("registry", "docker_credential"),
    ] {
        let outside = knowers(home, client);
        assert!(
            outside.is_empty(),
            "{client} is named outside worker/src/{home}: {outside:?}"
        );
    }
    assert_eq!(code_of(r#"let f = "lapin::x"; // kube::y"#), "let f = ; ");
}
