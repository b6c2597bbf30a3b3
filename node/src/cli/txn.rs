//! The `seam txn` script: a transaction as readable lines.
//!
//! ```text
//! # Lines starting with '#' and blank lines are ignored.
//! compare value   KEY = VALUE        # also != > <
//! compare version KEY = N            # writes since creation (0: absent)
//! compare mod     KEY > N            # mod_revision
//! compare create  KEY = N            # create_revision
//! compare token   KEY = N            # the key's current lease token
//! compare exists  KEY
//! compare absent  KEY
//! success put KEY VALUE [token=N]
//! success del KEY [token=N]
//! success get KEY
//! failure get KEY                    # failure: the same operations, run when a compare fails
//! ```
//!
//! Words are separated by spaces; a word with spaces (or one that is empty) is written in
//! double quotes, with `\"` and `\\` inside. All compares must hold for the `success`
//! operations to run; otherwise the `failure` operations run.

use seam_client::{Cmp, CmpOp, Op, Txn};

/// Lines one script may have: a transaction this long is refused by the node anyway
/// (its `txn_ops_max`), so a larger script is a mistake worth naming early.
pub const TXN_LINES_MAX: usize = 10_000;

/// Parses a script into a transaction. Errors name the line and what is wrong.
pub fn parse(script: &str) -> Result<Txn, String> {
    let mut txn = Txn::new();
    let mut lines = 0usize;
    for (index, raw) in script.lines().enumerate() {
        let number = index + 1;
        let words = split_words(raw).map_err(|e| format!("line {number}: {e}"))?;
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        lines += 1;
        if lines > TXN_LINES_MAX {
            return Err(format!("more than {TXN_LINES_MAX} statements (TXN_LINES_MAX)"));
        }
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        txn = statement(txn, &words).map_err(|e| format!("line {number} ({}): {e}", raw.trim()))?;
    }
    Ok(txn)
}

fn statement(txn: Txn, words: &[&str]) -> Result<Txn, String> {
    match words {
        ["compare", rest @ ..] => Ok(txn.when(compare(rest)?)),
        ["success", rest @ ..] => Ok(txn.and_then(operation(rest)?)),
        ["failure", rest @ ..] => Ok(txn.or_else(operation(rest)?)),
        [other, ..] => Err(format!("expected compare, success or failure, found {other:?}")),
        [] => Err("empty statement".into()),
    }
}

fn compare(words: &[&str]) -> Result<Cmp, String> {
    match words {
        ["exists", key] => Ok(Cmp::exists(key, true)),
        ["absent", key] => Ok(Cmp::exists(key, false)),
        [target, key, op, operand] => {
            let op = cmp_op(op)?;
            let number = || operand.parse::<u64>().map_err(|_| format!("{operand:?} is not a number"));
            match *target {
                "value" => Ok(Cmp::value(key, op, operand)),
                "version" => Ok(Cmp::version(key, op, number()?)),
                "mod" => Ok(Cmp::mod_revision(key, op, number()?)),
                "create" => Ok(Cmp::create_revision(key, op, number()?)),
                "token" => Ok(Cmp::lease_token(key, op, number()?)),
                other => {
                    Err(format!("unknown compare target {other:?} (value, version, mod, create, token)"))
                }
            }
        }
        _ => {
            Err("expected `compare TARGET KEY OP OPERAND`, `compare exists KEY` or `compare absent KEY`"
                .into())
        }
    }
}

fn cmp_op(op: &str) -> Result<CmpOp, String> {
    match op {
        "=" | "==" => Ok(CmpOp::Equal),
        "!=" => Ok(CmpOp::NotEqual),
        ">" => Ok(CmpOp::Greater),
        "<" => Ok(CmpOp::Less),
        other => Err(format!("unknown comparison {other:?} (=, !=, >, <)")),
    }
}

fn token(word: Option<&&str>) -> Result<Option<u64>, String> {
    match word {
        None => Ok(None),
        Some(w) => match w.strip_prefix("token=") {
            Some(n) => n.parse().map(Some).map_err(|_| format!("{w:?}: token must be a number")),
            None => Err(format!("unexpected {w:?} (expected token=N)")),
        },
    }
}

fn operation(words: &[&str]) -> Result<Op, String> {
    match words {
        ["get", key] => Ok(Op::get(key)),
        ["put", key, value, rest @ ..] if rest.len() <= 1 => {
            Ok(Op::put_fenced(key, value, token(rest.first())?))
        }
        ["del", key, rest @ ..] if rest.len() <= 1 => Ok(Op::delete_fenced(key, token(rest.first())?)),
        _ => Err("expected `get KEY`, `put KEY VALUE [token=N]` or `del KEY [token=N]`".into()),
    }
}

/// Splits a line into words, honouring double quotes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { return Ok(words) };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => word.push(c),
                        Some(c) => return Err(format!("unknown escape \\{c}")),
                        None => return Err("unterminated quote".into()),
                    },
                    Some(c) => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_syntax() {
        let script = r#"
            # move one unit
            compare value inventory/a = "3"
            compare version inventory/b > 0
            compare absent locks/x
            success put inventory/a 2
            success put "note with spaces" "a \"quoted\" value" token=7
            success del tmp/1
            failure get inventory/a
        "#;
        let txn = parse(script).expect("parses");
        assert_eq!(txn.len(), 7);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("compare value k = v\nsuccess frob k").expect_err("bad op");
        assert!(err.starts_with("line 2"), "{err}");
        let err = parse("compare value k ~ v").expect_err("bad comparison");
        assert!(err.contains("unknown comparison"), "{err}");
        let err = parse("success put k \"open").expect_err("bad quote");
        assert!(err.contains("unterminated"), "{err}");
        let err = parse("compare version k = x").expect_err("bad number");
        assert!(err.contains("not a number"), "{err}");
    }
}
