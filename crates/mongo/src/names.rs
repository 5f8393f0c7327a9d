//! Names in the snapshot tree: database and collection names as file
//! names. MongoDB allows `/` in collection names and `%` anywhere; the
//! tree forbids `/`, NUL, `.` and `..`. So `%`, `/` and NUL are written
//! `%25`, `%2F`, `%00`, and a leading `.` is `%2E` (FORMAT.md §13).

/// The file name of a database or collection name.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '\0' => out.push_str("%00"),
            '.' if i == 0 => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    out
}

/// The name a file name stands for; `None` for a name [`escape`] cannot
/// have written.
pub fn unescape(file: &str) -> Option<String> {
    let mut out = String::with_capacity(file.len());
    let mut rest = file;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "00" => '\0',
            "2E" if at == 0 && out.is_empty() => '.',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    (escape(&out) == file).then_some(out)
}

/// A namespace `db.collection`, split at the first dot (database names
/// never hold one).
pub fn split_namespace(ns: &str) -> Option<(&str, &str)> {
    ns.split_once('.')
        .filter(|(d, c)| !d.is_empty() && !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_file_names() {
        for name in ["users", "a/b", "%", "..", ".x", "x.y", "a\0b", "é/ü", "%2F"] {
            let file = escape(name);
            assert!(!file.contains('/') && !file.contains('\0'), "{file}");
            assert!(file != "." && file != ".." && !file.starts_with('.'));
            assert_eq!(unescape(&file).as_deref(), Some(name), "{file}");
        }
        assert_eq!(escape("a/b%"), "a%2Fb%25");
        // Names escape() never writes.
        for bad in ["%", "%2", "%41", "a%2Eb", "%2f"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn namespaces_split_at_the_first_dot() {
        assert_eq!(split_namespace("app.users.v2"), Some(("app", "users.v2")));
        assert_eq!(split_namespace("app"), None);
        assert_eq!(split_namespace(".x"), None);
    }
}
