//! The key template: `"movie-likes:{movie_id}"` becomes
//! `::std::format!("movie-likes:{}", movie_id)`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Expr, Ident, LitStr};

/// A parsed template: the `format!` string (holes as `{}`, literal braces doubled), the hole
/// expressions in order, and the plain text for a template without holes.
#[derive(Debug)]
pub(crate) struct Template {
    format: String,
    plain: String,
    holes: Vec<String>,
}

/// Splits `src` into literal text and `{…}` holes, as `format!` does: `{{` and `}}` are literal
/// braces. The holes come back as written, trimmed; the caller parses them.
pub(crate) fn split(src: &str) -> Result<Template, String> {
    let mut format = String::new();
    let mut plain = String::new();
    let mut holes = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(['{', '}']) {
        format.push_str(&rest[..at]);
        plain.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{") {
            format.push_str("{{");
            plain.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            format.push_str("}}");
            plain.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(format!(
                "unmatched `}}` at byte {at} of the key template; write `}}}}` for a literal brace",
                at = src.len() - tail.len()
            ));
        } else {
            let inside = &tail[1..];
            let end = inside.find(['{', '}']);
            let Some(end) = end.filter(|&end| inside[end..].starts_with('}')) else {
                return Err(format!(
                    "unclosed `{{` at byte {at} of the key template; write `{{{{` for a literal \
                     brace",
                    at = src.len() - tail.len()
                ));
            };
            let hole = inside[..end].trim();
            if hole.is_empty() {
                return Err(
                    "empty `{}` in the key template; name a parameter inside, as in \
                            `{id}`"
                        .to_owned(),
                );
            }
            holes.push(hole.to_owned());
            format.push_str("{}");
            rest = &inside[end + 1..];
        }
    }
    format.push_str(rest);
    plain.push_str(rest);
    Ok(Template {
        format,
        plain,
        holes,
    })
}

/// The identifier an expression is rooted at: `order` in `order.items[0].name()`. `None` for
/// anything else (a call, a path, arithmetic).
fn root(expr: &Expr) -> Option<&Ident> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident(),
        Expr::Field(f) => root(&f.base),
        Expr::MethodCall(m) => root(&m.receiver),
        Expr::Index(i) => root(&i.expr),
        Expr::Paren(p) => root(&p.expr),
        Expr::Reference(r) => root(&r.expr),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Deref(_),
            expr,
            ..
        }) => root(expr),
        _ => None,
    }
}

/// The expression that builds the lock name from `key`: a `format!` over the holes, each of
/// which must be rooted at one of `params`. Errors point at the literal (a proc macro cannot
/// point inside one on stable).
pub(crate) fn expand(key: &LitStr, params: &[Ident], function: &Ident) -> syn::Result<TokenStream> {
    let span = key.span();
    let template = split(&key.value()).map_err(|e| syn::Error::new(span, e))?;
    if template.holes.is_empty() {
        let plain = LitStr::new(&template.plain, span);
        return Ok(quote!(::std::string::String::from(#plain)));
    }
    let mut exprs = Vec::new();
    for hole in &template.holes {
        // Parsing through a literal gives the hole's tokens that literal's span: located at the
        // key, so a type error in `{order.idd}` points there, but marked as coming from the
        // macro, so rustc does not offer to rewrite the literal into a field name.
        let tokens_span = Span::call_site().located_at(span);
        let expr: Expr = LitStr::new(hole, tokens_span).parse().map_err(|e| {
            syn::Error::new(
                span,
                format!("`{{{hole}}}` in the key template is not an expression: {e}"),
            )
        })?;
        match root(&expr) {
            Some(ident) if params.contains(ident) => {}
            Some(ident) => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "`{ident}` is not a parameter of `{function}`; key templates can only use \
                         the function's parameters"
                    ),
                ));
            }
            None => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "`{{{hole}}}` in the key template must start with a parameter, optionally \
                         followed by fields, method calls or indexing, as in `{{order.id}}`"
                    ),
                ));
            }
        }
        exprs.push(expr);
    }
    let format = LitStr::new(&template.format, span);
    Ok(quote!(::std::format!(#format, #(#exprs),*)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_literal_braces() {
        let t = split("movie-likes:{movie_id}:{ order.id }").unwrap();
        assert_eq!(t.format, "movie-likes:{}:{}");
        assert_eq!(t.holes, ["movie_id", "order.id"]);
        let t = split("{{literal}}:{user.name()}").unwrap();
        assert_eq!(t.format, "{{literal}}:{}");
        assert_eq!(t.holes, ["user.name()"]);
        let t = split("plain {{x}}").unwrap();
        assert_eq!(t.plain, "plain {x}");
        assert!(t.holes.is_empty());
    }

    #[test]
    fn unbalanced_braces_are_refused() {
        assert!(
            split("a:{id")
                .unwrap_err()
                .contains("unclosed `{` at byte 2")
        );
        assert!(split("a:{x{y}").unwrap_err().contains("unclosed"));
        assert!(
            split("a:id}")
                .unwrap_err()
                .contains("unmatched `}` at byte 4")
        );
        assert!(split("a:{ }").unwrap_err().contains("empty"));
    }

    #[test]
    fn roots() {
        let root_of = |s: &str| root(&syn::parse_str(s).unwrap()).map(|i| i.to_string());
        assert_eq!(root_of("order.id").as_deref(), Some("order"));
        assert_eq!(root_of("user.name().len()").as_deref(), Some("user"));
        assert_eq!(root_of("self.tenant").as_deref(), Some("self"));
        assert_eq!(root_of("ids[0]").as_deref(), Some("ids"));
        assert_eq!(root_of("*id").as_deref(), Some("id"));
        assert_eq!(root_of("f(x)"), None);
        assert_eq!(root_of("a + b"), None);
        assert_eq!(root_of("std::process::id()"), None);
    }
}
