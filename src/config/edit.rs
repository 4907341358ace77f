//! Adding items to a list in the proxy's YAML file by editing its text, so the operator's
//! comments, order and layout survive (a round trip through serde_yaml would drop them).
//! Only block mappings and one-line flow or block lists are edited; every edit is then
//! proven by parsing the old and the new text: the new document must equal the old one with
//! just the items added. Anything else is refused, and the caller prints the lines to add
//! by hand ([`by_hand`]).

use serde_yaml::{Mapping, Value};

/// One line of the file: its text without the line ending, and the ending ("" on a last
/// line without one).
struct Line {
    text: String,
    ending: String,
}

impl Line {
    fn indent(&self) -> usize {
        self.text.len() - self.text.trim_start_matches(' ').len()
    }

    /// Neither blank nor a comment.
    fn content(&self) -> bool {
        let t = self.text.trim();
        !t.is_empty() && !t.starts_with('#')
    }

    /// The value after `key:` when this line is `key:` at `indent`, comment stripped.
    fn value_of(&self, indent: usize, key: &str) -> Option<String> {
        if self.indent() != indent {
            return None;
        }
        let rest = self.text[indent..].strip_prefix(key)?.trim_start_matches(' ');
        let rest = rest.strip_prefix(':')?;
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return None;
        }
        let value = rest.trim();
        Some(if value.starts_with('#') { "" } else { value }.to_string())
    }
}

fn split_lines(text: &str) -> Vec<Line> {
    text.split_inclusive('\n')
        .map(|l| {
            let body = l.trim_end_matches(['\n', '\r']);
            Line {
                text: body.to_string(),
                ending: l[body.len()..].to_string(),
            }
        })
        .collect()
}

/// The items of the list at `path` as the file holds them: an absent key or a null is empty.
pub(crate) fn list_at(text: &str, path: &[&str]) -> Result<Vec<String>, String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut v = &doc;
    for (i, key) in path.iter().enumerate() {
        match v {
            Value::Null => return Ok(Vec::new()),
            Value::Mapping(m) => match m.get(*key) {
                Some(next) => v = next,
                None => return Ok(Vec::new()),
            },
            _ => return Err(format!("{} is not a mapping", path[..i].join("."))),
        }
    }
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => Ok(items.iter().map(scalar_text).collect()),
        _ => Err(format!("{} is not a list", path.join("."))),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// `items` double-quoted (every item here is plain ASCII without quotes, but a plain YAML
/// scalar such as `12:34` could be read as a number by YAML 1.1 tools).
fn quoted(item: &str) -> String {
    serde_json::to_string(item).unwrap_or_else(|_| format!("\"{item}\""))
}

/// The block YAML setting the list at `path` to `items`, for an operator to add by hand.
pub(crate) fn by_hand(path: &[&str], items: &[String]) -> String {
    let mut out = String::new();
    for (depth, key) in path.iter().enumerate() {
        out.push_str(&format!("{}{key}:\n", "  ".repeat(depth)));
    }
    for item in items {
        out.push_str(&format!("{}- {}\n", "  ".repeat(path.len()), quoted(item)));
    }
    out
}

/// The text with `items` appended to the list at `path`, every other byte kept; `Err` says
/// why this layout cannot be edited safely.
pub(crate) fn add_to_list(text: &str, path: &[&str], items: &[String]) -> Result<String, String> {
    let mut lines = split_lines(text);
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let (at, new) = plan(&mut lines, path, items)?;
    insert(&mut lines, at, &new, nl);
    let edited: String = lines.iter().map(|l| format!("{}{}", l.text, l.ending)).collect();
    prove(text, &edited, path, items)?;
    Ok(edited)
}

/// Inserts `new` lines after line `at` (`None`: at the top).
fn insert(lines: &mut Vec<Line>, at: Option<usize>, new: &[String], nl: &str) {
    let pos = match at {
        Some(i) => {
            if lines[i].ending.is_empty() {
                lines[i].ending = nl.to_string();
            }
            i + 1
        }
        None => 0,
    };
    for (k, text) in new.iter().enumerate() {
        lines.insert(
            pos + k,
            Line {
                text: text.clone(),
                ending: nl.to_string(),
            },
        );
    }
}

/// Where to insert which lines (an edit of a flow list is made in place, with no new line).
fn plan(
    lines: &mut [Line],
    path: &[&str],
    items: &[String],
) -> Result<(Option<usize>, Vec<String>), String> {
    // The block being searched: lines `from..to`, its keys at `indent`.
    let (mut from, mut to, mut indent, mut unit) = (0, lines.len(), 0usize, 2usize);
    let mut parent: Option<usize> = None;
    for (depth, key) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let found = (from..to).find_map(|i| lines[i].value_of(indent, key).map(|v| (i, v)));
        let Some((i, value)) = found else {
            let after = (from..to).rev().find(|&i| lines[i].content()).or(parent);
            return Ok((after, new_block(&path[depth..], items, indent, unit)));
        };
        if last {
            return edit_list(lines, i, &value, items, unit);
        }
        if !value.is_empty() {
            return Err(format!(
                "{} is written on one line ({value}), not as an indented block",
                path[..=depth].join(".")
            ));
        }
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].content() && lines[j].indent() <= indent)
            .unwrap_or(lines.len());
        let child = (i + 1..end).find(|&j| lines[j].content()).map(|j| lines[j].indent());
        parent = Some(i);
        match child {
            Some(c) => {
                unit = c - indent;
                indent = c;
            }
            None => indent += unit,
        }
        (from, to) = (i + 1, end);
    }
    Err("an empty key path".into())
}

/// `path` as new block lines at `indent`, the list's items below the last key.
fn new_block(path: &[&str], items: &[String], indent: usize, unit: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (depth, key) in path.iter().enumerate() {
        out.push(format!("{}{key}:", " ".repeat(indent + depth * unit)));
    }
    let item_indent = indent + path.len() * unit;
    out.extend(items.iter().map(|it| format!("{}- {}", " ".repeat(item_indent), quoted(it))));
    out
}

/// The list key found at line `i` with `value` after its colon: a one-line flow list is
/// extended in place, a block list gets new item lines after its last item.
fn edit_list(
    lines: &mut [Line],
    i: usize,
    value: &str,
    items: &[String],
    unit: usize,
) -> Result<(Option<usize>, Vec<String>), String> {
    let joined: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    if value.starts_with('[') {
        let line = &lines[i].text;
        let open = line.find('[').ok_or("no '['")?;
        let close = closing_bracket(line, open)
            .ok_or("the list spans several lines or holds nested brackets")?;
        let after = line[close + 1..].trim();
        if !(after.is_empty() || after.starts_with('#')) {
            return Err(format!("unexpected text after the list: {after}"));
        }
        let head = line[..close].trim_end();
        let gap = &line[head.len()..close];
        let sep = match head.chars().last() {
            Some('[') => "",
            Some(',') => " ",
            _ => ", ",
        };
        lines[i].text = format!("{head}{sep}{}{gap}{}", joined.join(", "), &line[close..]);
        return Ok((Some(i), Vec::new()));
    }
    if !value.is_empty() {
        return Err(format!("its value ({value}) is not a list this editor can extend"));
    }
    let key_indent = lines[i].indent();
    let first = (i + 1..lines.len()).find(|&j| lines[j].content());
    let seq_indent = first
        .filter(|&j| lines[j].indent() >= key_indent && is_item(&lines[j]))
        .map(|j| lines[j].indent());
    let Some(s) = seq_indent else {
        let new = joined
            .iter()
            .map(|q| format!("{}- {q}", " ".repeat(key_indent + unit)))
            .collect();
        return Ok((Some(i), new));
    };
    let mut last = i;
    for (j, line) in lines.iter().enumerate().skip(i + 1) {
        if !line.content() {
            continue;
        }
        if (line.indent() == s && is_item(line)) || line.indent() > s {
            last = j;
        } else {
            break;
        }
    }
    let new = joined.iter().map(|q| format!("{}- {q}", " ".repeat(s))).collect();
    Ok((Some(last), new))
}

fn is_item(line: &Line) -> bool {
    let t = line.text.trim_start();
    t == "-" || t.starts_with("- ")
}

/// The `]` closing the `[` at `open` on this line, outside quotes; `None` for nested or
/// unclosed lists.
fn closing_bracket(line: &str, open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (k, c) in line[open + 1..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => return None,
            (None, ']') => return Some(open + 1 + k),
            _ => {}
        }
    }
    None
}

/// The edit changed nothing but the list: the new document equals the old one with the
/// items appended at `path`.
fn prove(old: &str, new: &str, path: &[&str], items: &[String]) -> Result<(), String> {
    let parse = |t: &str| serde_yaml::from_str::<Value>(t).map_err(|e| e.to_string());
    let mut expected = parse(old).map_err(|e| format!("the file is not YAML: {e}"))?;
    let got = parse(new).map_err(|e| format!("the edited text would not parse: {e}"))?;
    let mut v = &mut expected;
    for key in path {
        if v.is_null() {
            *v = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = v else {
            return Err("a key on the way is not a mapping".into());
        };
        v = m.entry(Value::from(*key)).or_insert(Value::Null);
    }
    if v.is_null() {
        *v = Value::Sequence(Vec::new());
    }
    let Value::Sequence(list) = v else {
        return Err(format!("{} is not a list", path.join(".")));
    };
    list.extend(items.iter().map(|s| Value::from(s.as_str())));
    if got == expected {
        Ok(())
    } else {
        Err("the edit would change more than the list (a layout this editor does not know)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &[&str] = &["security", "tls", "master_cert_sha256"];

    fn add(text: &str, item: &str) -> Result<String, String> {
        add_to_list(text, PATH, &[item.to_string()])
    }

    #[test]
    fn a_block_list_gets_an_item_after_its_last_and_comments_stay() {
        let text = "# proxy\nmaster_host: det # the master\nsecurity:\n  tls:\n    # pins\n    master_cert_sha256:\n      - \"aa\"  # old\n      # next one\n      - bb\n    master_cert: /x.pem\nlog: {level: info}\n";
        let new = add(text, "cc").unwrap();
        assert_eq!(
            new,
            text.replace("      - bb\n", "      - bb\n      - \"cc\"\n")
        );
        assert_eq!(list_at(&new, PATH).unwrap(), ["aa", "bb", "cc"]);
    }

    #[test]
    fn a_block_list_at_the_keys_own_indent_and_a_null_list() {
        let text = "security:\n  tls:\n    master_cert_sha256:\n    - aa\n    enabled: true\n";
        let new = add(text, "cc").unwrap();
        assert!(new.contains("    - aa\n    - \"cc\"\n    enabled: true\n"), "{new}");
        let text = "security:\n  tls:\n    master_cert_sha256:\n    enabled: true\n";
        let new = add(text, "cc").unwrap();
        assert!(new.contains("master_cert_sha256:\n      - \"cc\"\n    enabled"), "{new}");
    }

    #[test]
    fn a_flow_list_is_extended_in_place() {
        for (before, after) in [
            ("[aa, bb]  # two", "[aa, bb, \"cc\"]  # two"),
            ("[]", "[\"cc\"]"),
            ("[ \"aa\" ]", "[ \"aa\", \"cc\" ]"),
            ("[aa,]", "[aa, \"cc\"]"),
        ] {
            let text = format!("security:\n  tls:\n    master_cert_sha256: {before}\n");
            let new = add(&text, "cc").unwrap();
            assert_eq!(new, format!("security:\n  tls:\n    master_cert_sha256: {after}\n"));
        }
    }

    #[test]
    fn missing_keys_are_added_as_blocks_in_the_files_indentation() {
        let text = "master_host: det\nsecurity:\n    tls:\n        master_cert: /x.pem\n\n# listeners\nlisteners: []\n";
        let new = add(text, "cc").unwrap();
        assert!(
            new.contains("master_cert: /x.pem\n        master_cert_sha256:\n            - \"cc\"\n\n# listeners"),
            "{new}"
        );
        let text = "master_host: det\nsecurity:\n  tls:\n    enabled: true\n";
        let new = add("master_host: det\n", "cc").unwrap();
        assert_eq!(new, "master_host: det\nsecurity:\n  tls:\n    master_cert_sha256:\n      - \"cc\"\n");
        let new = add(text.replace("  tls:\n    enabled: true\n", "  other: 1\n").as_str(), "cc");
        assert!(new.unwrap().contains("  other: 1\n  tls:\n    master_cert_sha256:\n      - \"cc\"\n"));
        let new = add("master_host: det", "cc").unwrap();
        assert!(new.starts_with("master_host: det\nsecurity:\n"), "{new}");
        let new = add("", "cc").unwrap();
        assert_eq!(list_at(&new, PATH).unwrap(), ["cc"]);
        let new = add("a: 1\r\nb: 2\r\n", "cc").unwrap();
        assert!(new.ends_with("b: 2\r\nsecurity:\r\n  tls:\r\n    master_cert_sha256:\r\n      - \"cc\"\r\n"), "{new:?}");
    }

    #[test]
    fn flow_mappings_and_odd_layouts_are_refused() {
        for text in [
            "security: {tls: {master_cert: /x.pem}}\n",
            "security:\n  tls: {master_cert: /x.pem}\n",
            "security:\n  tls:\n    master_cert_sha256: aa\n",
            "security:\n  tls:\n    master_cert_sha256: [aa,\n      bb]\n",
            "{security: {tls: {}}}\n",
            "master_host: det\n...\n",
        ] {
            assert!(add(text, "cc").is_err(), "edited: {text}");
        }
    }

    #[test]
    fn the_existing_list_is_read_and_by_hand_is_valid_yaml() {
        assert_eq!(list_at("master_host: det\n", PATH).unwrap(), Vec::<String>::new());
        assert_eq!(list_at("security: {tls: {master_cert_sha256: [aa]}}", PATH).unwrap(), ["aa"]);
        assert!(list_at("security: {tls: {master_cert_sha256: aa}}", PATH).is_err());
        let hand = by_hand(PATH, &["aa".into(), "12:34".into()]);
        assert_eq!(list_at(&hand, PATH).unwrap(), ["aa", "12:34"]);
        assert!(hand.starts_with("security:\n  tls:\n    master_cert_sha256:\n      - \"aa\"\n"));
    }
}
