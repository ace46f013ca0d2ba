//! The arguments of `#[locked(…)]`: parsed, checked against each other, durations checked
//! against deadbolt's limits, all at compile time.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

// deadbolt's limits (`deadbolt::MIN_LEASE` and friends). This crate cannot depend on deadbolt,
// which depends on it; a unit test checks that the two agree.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(10);
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

const NAMES: &str = "`key`, `client`, `wait`, `lease`, `watchdog`, `options` and `guard`";

/// The checked arguments.
pub(crate) struct Args {
    /// The lock name template.
    pub(crate) key: LitStr,
    /// The expression for the `Client`.
    pub(crate) client: Expr,
    /// How the `LockOptions` are built.
    pub(crate) options: Options,
    /// The name the `LockScope` is bound to in the body.
    pub(crate) guard: Option<Ident>,
}

/// Where the `LockOptions` come from.
pub(crate) enum Options {
    /// `options = expr`.
    Given(Expr),
    /// `wait`, `lease`, `watchdog`, each optional.
    Built {
        wait: Option<Duration>,
        lease: Option<Lease>,
    },
}

pub(crate) enum Lease {
    Fixed(Duration),
    Watchdog(Duration),
}

impl Options {
    /// An expression of type `deadbolt::LockOptions`.
    pub(crate) fn to_expr(&self) -> TokenStream {
        match self {
            Options::Given(expr) => expr.to_token_stream(),
            Options::Built { wait, lease } => {
                let wait = match wait {
                    Some(wait) => duration(*wait),
                    None => quote!(::deadbolt::DEFAULT_WAIT),
                };
                let lease = match lease {
                    Some(Lease::Fixed(lease)) => {
                        let lease = duration(*lease);
                        quote!(::deadbolt::Lease::Fixed(#lease))
                    }
                    Some(Lease::Watchdog(lease)) => {
                        let lease = duration(*lease);
                        quote!(::deadbolt::Lease::renewed(#lease))
                    }
                    None => quote!(::deadbolt::Lease::renewed(
                        ::deadbolt::DEFAULT_WATCHDOG_LEASE
                    )),
                };
                quote!(::deadbolt::LockOptions::new(#wait, #lease))
            }
        }
    }
}

/// `::std::time::Duration::from_nanos(…)`; every checked duration fits in a `u64` of nanoseconds.
fn duration(d: Duration) -> TokenStream {
    let nanos = proc_macro2::Literal::u64_suffixed(d.as_nanos() as u64);
    quote!(::std::time::Duration::from_nanos(#nanos))
}

/// One `name = value`, before any check.
struct Arg {
    name: Ident,
    value: Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `parse_any` so that a keyword (`crate = …`) is reported as an unknown argument.
        let name = Ident::parse_any(input).map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected an argument name: one of {NAMES}"),
            )
        })?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                input.span(),
                format!("expected `=` after `{name}`: arguments are written `name = value`"),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Arg { name, value })
    }
}

/// Every argument as written, in order.
pub(crate) struct RawArgs(Vec<Arg>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let args = Punctuated::<Arg, Token![,]>::parse_terminated(input)?;
        Ok(RawArgs(args.into_iter().collect()))
    }
}

/// Collects errors so that one compile reports all of them.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn into_result(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

impl RawArgs {
    /// Checks the arguments; errors go to `errors`, and `None` comes back if there were any.
    pub(crate) fn check(self, errors: &mut Errors) -> Option<Args> {
        let mut key = None;
        let mut client = None;
        let mut wait = None;
        let mut lease: Option<(Ident, Lease)> = None;
        let mut options: Option<(Ident, Expr)> = None;
        let mut guard = None;
        let mut seen: Vec<String> = Vec::new();
        for Arg { name, value } in self.0 {
            let text = name.to_string();
            if seen.contains(&text) {
                errors.push(syn::Error::new(
                    name.span(),
                    format!("`{name}` is given twice"),
                ));
                continue;
            }
            seen.push(text.clone());
            let result = match text.as_str() {
                "key" => string(&name, &value, "\"order:{id}\"").map(|lit| key = Some(lit)),
                "client" => {
                    client = Some(value);
                    Ok(())
                }
                "wait" => parse_duration(&name, &value).and_then(|(d, lit)| {
                    if d > MAX_WAIT {
                        Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "wait {} is too long: the wait ranges from 0s to 24h",
                                lit.to_token_stream()
                            ),
                        ))
                    } else {
                        wait = Some(d);
                        Ok(())
                    }
                }),
                "lease" | "watchdog" => parse_duration(&name, &value).and_then(|(d, lit)| {
                    check_lease(&name, d, &lit)?;
                    if let Some((other, _)) = &lease {
                        return Err(syn::Error::new(
                            name.span(),
                            format!(
                                "`{other}` and `{name}` cannot be used together: `lease` sets a \
                                 fixed lease, `watchdog` one that is renewed while the body runs"
                            ),
                        ));
                    }
                    let kind = if text == "lease" {
                        Lease::Fixed(d)
                    } else {
                        Lease::Watchdog(d)
                    };
                    lease = Some((name.clone(), kind));
                    Ok(())
                }),
                "options" => {
                    options = Some((name.clone(), value));
                    Ok(())
                }
                "guard" => match &value {
                    Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                        guard = p.path.get_ident().cloned();
                        Ok(())
                    }
                    _ => Err(syn::Error::new_spanned(
                        &value,
                        "`guard` takes an identifier, as in `guard = lock`",
                    )),
                },
                _ => Err(syn::Error::new(
                    name.span(),
                    format!("unknown argument `{name}`; the arguments are {NAMES}"),
                )),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }

        if let Some((options_name, _)) = &options {
            for name in ["wait", "lease", "watchdog"] {
                if seen.iter().any(|s| s == name) {
                    errors.push(syn::Error::new(
                        options_name.span(),
                        format!(
                            "`options` and `{name}` cannot be used together: `options` already \
                             sets the wait and the lease"
                        ),
                    ));
                }
            }
        }
        let key_example = "missing `key = \"…\"`, the lock name, as in `key = \"order:{id}\"`";
        if key.is_none() && !seen.iter().any(|s| s == "key") {
            errors.push(syn::Error::new(Span::call_site(), key_example));
        }
        if client.is_none() {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing `client = …`, the `deadbolt::Client` to lock with, as in \
                 `client = self.locks`",
            ));
        }

        if errors.0.is_some() {
            return None;
        }
        let options = match options {
            Some((_, expr)) => Options::Given(expr),
            None => Options::Built {
                wait,
                lease: lease.map(|(_, l)| l),
            },
        };
        Some(Args {
            key: key?,
            client: client?,
            options,
            guard,
        })
    }
}

/// The string literal of `name = "…"`.
fn string(name: &Ident, value: &Expr, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{name}` takes a string literal, as in `{name} = {example}`"),
        )),
    }
}

/// The duration of `name = "10s"`, with its literal for error spans.
fn parse_duration(name: &Ident, value: &Expr) -> syn::Result<(Duration, LitStr)> {
    let lit = string(name, value, "\"10s\"")?;
    match humantime::parse_duration(&lit.value()) {
        Ok(d) => Ok((d, lit)),
        Err(e) => Err(syn::Error::new(
            lit.span(),
            format!(
                "invalid duration {}: {e}; write it as in \"10s\", \"1500ms\" or \"2m\"",
                lit.to_token_stream()
            ),
        )),
    }
}

fn check_lease(name: &Ident, d: Duration, lit: &LitStr) -> syn::Result<()> {
    let problem = if d < MIN_LEASE {
        "too short"
    } else if d > MAX_LEASE {
        "too long"
    } else {
        return Ok(());
    };
    Err(syn::Error::new(
        lit.span(),
        format!(
            "{name} {} is {problem}: a lease ranges from 10ms to 24h",
            lit.to_token_stream()
        ),
    ))
}
