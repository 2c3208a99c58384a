//! The invariants of ARCHITECTURE.md, checked: each rule names the files
//! that may (or may not) use a path, and the test fails naming the file,
//! the line and the reason when code breaks one.
//!
//! Comments and string literals are ignored (a doc comment may say "only
//! amqp.rs knows lapin", a log filter may name `lapin::returned_messages`);
//! what counts is code: `use lapin::…`, `lapin::Foo`, `::lapin::…` and
//! `extern crate lapin`.

use std::path::{Path, PathBuf};

/// A dependency that only some files may name.
struct Confined {
    /// Crate names as written in paths (`k8s_openapi`, not `k8s-openapi`).
    crates: &'static [&'static str],
    /// Files (or folders, ending in `/`) under `worker/src` allowed to name
    /// them.
    allowed: &'static [&'static str],
    why: &'static str,
}

const CONFINED: &[Confined] = &[
    Confined {
        crates: &["lapin"],
        allowed: &["amqp.rs"],
        why: "only amqp.rs knows lapin: the broker client can change (or be faked) in one file, \
              and every other module sees Kiln's own types (Delivery, Broker)",
    },
    Confined {
        crates: &["redis"],
        allowed: &["lease.rs"],
        why: "only lease.rs knows Redis: the lease and fencing rules (Lua scripts, key layout) \
              live in one file that can be reviewed as a whole",
    },
    Confined {
        crates: &["kube", "k8s_openapi"],
        allowed: &["pod/"],
        why: "only pod/ knows kube: classify.rs and the machine decide on PodView, a plain copy, \
              so they stay pure and unit-testable; the CLI reaches the cluster through pod::Pods",
    },
];

/// Files of the pure core, and what they may not name outside their
/// `#[cfg(test)]` items.
const PURE: &[&str] = &["machine.rs", "classify.rs", "plan.rs", "journal.rs"];
const CLOCK_AND_RUNTIME: &[&str] = &[
    "tokio",
    "SystemTime",
    "Instant::now",
    "Timestamp::now",
    "Zoned::now",
];
const PURE_WHY: &str = "the machine, classify, plan and journal do no IO and never read the clock: \
     every input (including the time) is an argument, so their tests are exact specifications \
     and a replay gives the same actions";

const PROTOCOL_FORBIDDEN: &[&str] = &["tokio", "std::fs", "std::net", "std::process"];
const PROTOCOL_WHY: &str = "kiln-protocol does no IO: it is the wire contract (types, \
     validation, names), shared by the worker, the CLI and any client, and must stay usable \
     anywhere (no runtime, no files, no sockets)";

#[test]
fn dependencies_stay_in_their_module() {
    let src = worker_src();
    let mut broken = Vec::new();
    for file in rust_files(&src) {
        let rel = relative(&file, &src);
        let code = strip_comments_and_strings(&read(&file));
        for rule in CONFINED {
            if rule.allowed.iter().any(|a| allows(a, &rel)) {
                continue;
            }
            for krate in rule.crates {
                if let Some(line) = names_crate(&code, krate) {
                    broken.push(format!(
                        "worker/src/{rel}:{line} names `{krate}`: {}",
                        rule.why
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_pure_core_neither_reads_the_clock_nor_uses_the_runtime() {
    let src = worker_src();
    let mut broken = Vec::new();
    for rel in PURE {
        let code = without_test_items(&strip_comments_and_strings(&read(&src.join(rel))));
        for word in CLOCK_AND_RUNTIME {
            if let Some(line) = find_path(&code, word) {
                broken.push(format!("worker/src/{rel}:{line} uses `{word}`: {PURE_WHY}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_protocol_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/src");
    let mut broken = Vec::new();
    for file in rust_files(&src) {
        let rel = relative(&file, &src);
        let code = strip_comments_and_strings(&read(&file));
        for word in PROTOCOL_FORBIDDEN {
            if let Some(line) = find_path(&code, word) {
                broken.push(format!(
                    "protocol/src/{rel}:{line} uses `{word}`: {PROTOCOL_WHY}"
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The checker itself: each spelling is caught, comments and strings are
/// not, and test items are left out where the rule says so.
#[test]
fn the_checker_sees_every_spelling_and_only_code() {
    for code in [
        "use lapin::Channel;",
        "fn f() -> lapin::Error { todo!() }",
        "let x = ::lapin::Connection::connect;",
        "extern crate lapin;",
        "use lapin as amqp;",
        "use {std::fmt, lapin::options};",
        "fn f(e: lapin :: Error) {}",
    ] {
        let stripped = strip_comments_and_strings(code);
        assert_eq!(names_crate(&stripped, "lapin"), Some(1), "{code}");
    }
    for code in [
        "// use lapin::Channel;",
        "/* lapin::Error /* nested */ lapin::X */",
        "/// only amqp.rs knows lapin::",
        r#"const F: &str = "info,lapin::returned_messages=error";"#,
        r##"const F: &str = r#"lapin::x "quoted" "#;"##,
        "let lapin_count = 1; let mylapin = 2;",
        "let c = '\"'; let s = 1;",
    ] {
        let stripped = strip_comments_and_strings(code);
        assert_eq!(names_crate(&stripped, "lapin"), None, "{code}");
    }
    // The `kube` of `let (redis, kube) = …` is a variable, not the crate.
    assert_eq!(names_crate("let (redis, kube) = (1, 2);", "kube"), None);
    assert_eq!(names_crate("let kube: Option<KubeClient>;", "kube"), None);
    // Lines are counted in the original text.
    let code = strip_comments_and_strings("/* a\nb */\n\"x\ny\"\nuse redis::Cmd;");
    assert_eq!(names_crate(&code, "redis"), Some(5));

    let code = "fn f() {}\n#[cfg(test)]\nmod tests {\n fn g() { tokio::time::pause(); }\n}\n";
    assert_eq!(find_path(&without_test_items(code), "tokio"), None);
    let code = "#[cfg(test)]\nuse tokio::x;\nfn f() { let t = Instant::now(); }";
    assert_eq!(
        find_path(&without_test_items(code), "Instant::now"),
        Some(3)
    );
    assert_eq!(
        find_path("let t = std::time::SystemTime::now();", "SystemTime"),
        Some(1)
    );
    assert_eq!(
        find_path("let t = MySystemTime::now();", "SystemTime"),
        None
    );
    assert_eq!(find_path("use std::fs;", "std::fs"), Some(1));
    assert_eq!(
        find_path("use std::{fs, io};", "std::fs"),
        None,
        "a known blind spot"
    );
}

fn worker_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no Rust files under {}", dir.display());
    out
}

fn relative(file: &Path, root: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .to_string_lossy()
        .replace('\\', "/")
}

fn allows(allowed: &str, rel: &str) -> bool {
    if allowed.ends_with('/') {
        rel.starts_with(allowed)
    } else {
        rel == allowed
    }
}

/// The first line where `krate` is used as a crate: followed by `::`, or
/// after `use` / `extern crate`.
fn names_crate(code: &str, krate: &str) -> Option<usize> {
    words(code, krate).find_map(|(at, line)| {
        let after = code[at + krate.len()..].trim_start();
        let before = code[..at].trim_end();
        let before = before.strip_suffix("::").unwrap_or(before).trim_end();
        let used = after.starts_with("::")
            || ends_with_word(before, "use")
            || ends_with_word(before, "crate")
                && ends_with_word(before[..before.len() - 5].trim_end(), "extern");
        used.then_some(line)
    })
}

/// The first line where `path` (one word or `a::b`) appears as a whole.
fn find_path(code: &str, path: &str) -> Option<usize> {
    words(code, path).map(|(_, line)| line).next()
}

/// Occurrences of `needle` not glued to other identifier characters, with
/// their 1-based line.
fn words<'a>(code: &'a str, needle: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    code.match_indices(needle).filter_map(move |(at, _)| {
        let glued_before = code[..at].chars().next_back().is_some_and(is_ident);
        let glued_after = code[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(is_ident);
        (!glued_before && !glued_after).then(|| (at, code[..at].matches('\n').count() + 1))
    })
}

fn ends_with_word(s: &str, word: &str) -> bool {
    s.strip_suffix(word)
        .is_some_and(|rest| !rest.chars().next_back().is_some_and(is_ident))
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Blanks out comments (line, block, nested) and string and char literals,
/// keeping every newline so line numbers stay those of the file.
fn strip_comments_and_strings(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…": ends at a quote followed by as many #.
            i += chars[i..].iter().position(|&c| c == '"').unwrap_or(0) + 1;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    blank(&mut out, c);
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `Some(number of #)` when a raw string literal starts at `i`.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && is_ident(chars[i - 1]) {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// A quote opens a char literal (`'a'`, `'\n'`, `'\''`), not a lifetime
/// (`'a`, `'static`).
fn is_char_literal(chars: &[char], i: usize) -> bool {
    matches!(
        (chars.get(i + 1), chars.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

/// Blanks out every item marked `#[cfg(test)]` (up to its `;` or its
/// matching `}`), in code already free of comments and strings.
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = code.to_owned();
    let mut from = 0;
    while let Some(at) = out[from..].find(MARK).map(|x| x + from) {
        let bytes = out.as_bytes();
        let mut end = at + MARK.len();
        let mut depth = 0usize;
        while end < bytes.len() {
            match bytes[end] {
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end += 1;
                    break;
                }
                _ => {}
            }
            end += 1;
        }
        let blanked: String = out[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..end, &blanked);
        from = end;
    }
    out
}
