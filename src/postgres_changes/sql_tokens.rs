//! A tokenizer for the SQL Postgres prints (`pg_get_expr` of a policy, the body of a
//! `language sql` function): just enough to tell identifiers, calls, strings and
//! operators apart, so [`super::policy`] can judge an expression and rewrite the calls
//! that read the viewer's claims. It never guesses: input it cannot split cleanly (an
//! unterminated string, a dollar-quoted body, a parameter) is an error, and the caller
//! then falls back to checking viewers one by one.

/// One token, borrowing its text from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a str),
    /// A double-quoted identifier, quotes included.
    Quoted(&'a str),
    /// A string literal, quotes (and an `E` prefix) included.
    Str(&'a str),
    /// A numeric literal.
    Number(&'a str),
    /// An operator (`=`, `->>`, `<>`, `~~` …).
    Op(&'a str),
    /// `::`
    Cast,
    /// `(`, `)`, `[`, `]`, `,`, `.`, `;`
    Punct(char),
}

impl<'a> Token<'a> {
    /// The token's text as written.
    pub fn text(&self) -> &'a str {
        match *self {
            Token::Word(s) | Token::Quoted(s) | Token::Str(s) | Token::Number(s) | Token::Op(s) => s,
            Token::Cast => "::",
            Token::Punct(c) => match c {
                '(' => "(",
                ')' => ")",
                '[' => "[",
                ']' => "]",
                ',' => ",",
                '.' => ".",
                _ => ";",
            },
        }
    }

    /// An unquoted word equal (ignoring ASCII case) to `w`.
    pub fn is_word(&self, w: &str) -> bool {
        matches!(self, Token::Word(s) if s.eq_ignore_ascii_case(w))
    }

    /// The value of a plain string literal (`'a''b'` → `a'b`); `None` for `E''` strings.
    pub fn string_value(&self) -> Option<String> {
        match self {
            Token::Str(s) if s.starts_with('\'') => Some(s[1..s.len() - 1].replace("''", "'")),
            _ => None,
        }
    }
}

const OPERATOR_CHARS: &str = "+-*/<>=~!@#%^&|`?";

/// Splits `sql` into tokens; comments and whitespace are dropped.
pub fn tokenize(sql: &str) -> Result<Vec<Token<'_>>, String> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/").ok_or("unterminated comment")?;
                i += 2 + end + 2;
            }
            b'\'' => {
                i = end_of_quoted(bytes, i, b'\'').ok_or("unterminated string")?;
                out.push(Token::Str(&sql[start..i]));
            }
            b'E' | b'e' if bytes.get(i + 1) == Some(&b'\'') => {
                // Backslash escapes: a `\'` does not end the string.
                i += 2;
                loop {
                    match bytes.get(i) {
                        None => return Err("unterminated string".into()),
                        Some(b'\\') => i += 2,
                        Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                out.push(Token::Str(&sql[start..i]));
            }
            b'"' => {
                i = end_of_quoted(bytes, i, b'"').ok_or("unterminated quoted identifier")?;
                out.push(Token::Quoted(&sql[start..i]));
            }
            b'$' => return Err("parameters and dollar quotes are not understood".into()),
            b':' if bytes.get(i + 1) == Some(&b':') => {
                i += 2;
                out.push(Token::Cast);
            }
            b'(' | b')' | b'[' | b']' | b',' | b';' => {
                i += 1;
                out.push(Token::Punct(c as char));
            }
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                out.push(Token::Punct('.'));
            }
            b'0'..=b'9' | b'.' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    // An exponent's sign belongs to the number.
                    if (bytes[i] == b'e' || bytes[i] == b'E') && matches!(bytes.get(i + 1), Some(b'+' | b'-')) {
                        i += 1;
                    }
                    i += 1;
                }
                out.push(Token::Number(&sql[start..i]));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$' || bytes[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Token::Word(&sql[start..i]));
            }
            c if OPERATOR_CHARS.as_bytes().contains(&c) => {
                while i < bytes.len() && OPERATOR_CHARS.as_bytes().contains(&bytes[i]) {
                    // `--` and `/*` inside an operator start a comment.
                    if i > start && (bytes[i..].starts_with(b"--") || bytes[i..].starts_with(b"/*")) {
                        break;
                    }
                    i += 1;
                }
                out.push(Token::Op(&sql[start..i]));
            }
            _ => return Err(format!("unexpected character {:?}", c as char)),
        }
    }
    Ok(out)
}

/// The index after the closing `quote` of the quoted text starting at `at` (a doubled
/// quote is part of the text).
fn end_of_quoted(bytes: &[u8], at: usize, quote: u8) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match bytes.get(i) {
            None => return None,
            Some(&q) if q == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            Some(&q) if q == quote => return Some(i + 1),
            Some(_) => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deparsed_policy_splits_into_its_parts() {
        let t = tokenize(
            "(EXISTS ( SELECT 1 FROM public.members m WHERE ((m.team = todos.team) AND (m.user_id = auth.uid()))))",
        )
        .unwrap();
        assert!(t.contains(&Token::Word("EXISTS")));
        assert!(t.windows(5).any(|w| w
            == [
                Token::Word("auth"),
                Token::Punct('.'),
                Token::Word("uid"),
                Token::Punct('('),
                Token::Punct(')')
            ]));
        let t = tokenize("((auth.jwt() -> 'app_metadata'::text) ->> 'team'::text) = 'it''s'").unwrap();
        assert!(t.contains(&Token::Op("->>")));
        assert!(t.contains(&Token::Cast));
        assert_eq!(t.last().and_then(Token::string_value).as_deref(), Some("it's"));
    }

    #[test]
    fn comments_quotes_and_numbers() {
        let t = tokenize("select 1.5e-3 -- note\n /* x */ \"Odd \"\"name\"\"\" E'a\\'b'").unwrap();
        assert_eq!(
            t,
            vec![
                Token::Word("select"),
                Token::Number("1.5e-3"),
                Token::Quoted("\"Odd \"\"name\"\"\""),
                Token::Str("E'a\\'b'")
            ]
        );
    }

    #[test]
    fn what_it_cannot_split_is_an_error() {
        assert!(tokenize("'open").is_err());
        assert!(tokenize("x = $1").is_err());
        assert!(tokenize("$$ body $$").is_err());
    }
}
