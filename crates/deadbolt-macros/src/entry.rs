//! `#[locked]`: the function's body moves into a `Client::with_lock` call.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{AttrStyle, FnArg, Ident, ItemFn, ReturnType, Type};

use crate::args::{Args, Errors, RawArgs};
use crate::template;

pub(crate) fn locked(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        // Not a function with a body: the error, and the item as it was.
        Err(e) => return with_error(e, item),
    };
    match expand(args, &function) {
        Ok(tokens) => tokens,
        // The function as written goes out with the error, so that the errors shown are ours
        // and not a cascade of "cannot find function" at its callers; parameters used only in
        // the arguments would be reported unused, which is noise next to the error.
        Err(e) => with_error(e, quote!(#[allow(unused_variables)] #function)),
    }
}

fn with_error(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#error #item)
}

fn expand(args: TokenStream, function: &ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "#[locked] only works on async fns",
        ));
    }
    let return_type = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            errors.push(syn::Error::new(
                sig.ident.span(),
                "#[locked] functions must return `Result<T, E>` where `E: From<deadbolt::Error>`",
            ));
            None
        }
    };
    let args = match syn::parse2::<RawArgs>(args) {
        Ok(raw) => raw.check(&mut errors),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let params = parameters(sig);
    let key = args.as_ref().and_then(|args| {
        template::expand(&args.key, &params, &sig.ident)
            .map_err(|e| errors.push(e))
            .ok()
    });
    errors.into_result()?;
    let (Some(args), Some(key), Some(return_type)) = (args, key, return_type) else {
        unreachable!("every missing piece above pushed an error")
    };
    Ok(generate(function, &args, key, return_type))
}

/// The names a key template may use: `self` and every binding of the parameters' patterns.
fn parameters(sig: &syn::Signature) -> Vec<Ident> {
    struct Bindings(Vec<Ident>);
    impl Visit<'_> for Bindings {
        fn visit_pat_ident(&mut self, pat: &syn::PatIdent) {
            self.0.push(pat.ident.clone());
            syn::visit::visit_pat_ident(self, pat);
        }
    }
    let mut bindings = Bindings(Vec::new());
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => bindings.0.push(Ident::new("self", receiver.span())),
            FnArg::Typed(typed) => bindings.visit_pat(&typed.pat),
        }
    }
    bindings.0
}

fn generate(function: &ItemFn, args: &Args, key: TokenStream, return_type: &Type) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = function;
    let outer = attrs.iter().filter(|a| matches!(a.style, AttrStyle::Outer));
    let inner = attrs
        .iter()
        .filter(|a| !matches!(a.style, AttrStyle::Outer));
    let stmts = &block.stmts;

    // Mixed-site names: the body cannot see them, nor can they shadow its names. Located at
    // the return type, as the `with_lock` call is (see below).
    let ret_span = return_type.span();
    let name = |s: &str| Ident::new(s, Span::mixed_site().located_at(ret_span));
    let (key_var, client_var, options_var) = (
        name("__deadbolt_key"),
        name("__deadbolt_client"),
        name("__deadbolt_options"),
    );
    let client = &args.client;
    let options = args.options.to_expr();
    let scope = match &args.guard {
        Some(guard) => guard.to_token_stream(),
        None => quote!(_),
    };

    // A return statement that never runs, first in the async block, as tracing's #[instrument]
    // does: it fixes the block's output type to the declared return type before the body is
    // checked, so `?` knows which error to convert into and `return Err(..)` infers. `impl
    // Trait` cannot be written there and becomes `_`.
    let mut pinned = return_type.clone();
    EraseImplTrait.visit_type_mut(&mut pinned);
    let fake = name("__deadbolt_fake_return");
    let pin_output = quote_spanned! {ret_span=>
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::let_with_type_underscore,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let #fake: #pinned = loop {};
            return #fake;
        }
    };
    let body = quote_spanned! {ret_span=>
        move |#scope: ::deadbolt::LockScope| async move {
            #pin_output
            #(#stmts)*
        }
    };
    // Spanned at the return type: a missing `From<deadbolt::Error>` for the error type is
    // reported there.
    let call = quote_spanned! {ret_span=>
        #client_var.with_lock(#key_var, #options_var, #body).await
    };

    let mut function = quote!(#(#outer)* #vis #sig);
    // The body keeps the braces of the original, and their span.
    block.brace_token.surround(&mut function, |body| {
        body.extend(quote! {
            #(#inner)*
            let #key_var: ::std::string::String = #key;
            let #client_var = ::core::clone::Clone::clone(&(#client));
            let #options_var: ::deadbolt::LockOptions = #options;
            #call
        });
    });
    function
}

/// `impl Trait` → `_`, for the type annotation of the fake return.
struct EraseImplTrait;

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(_) = ty {
            *ty = syn::parse_quote!(_);
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::args::{MAX_LEASE, MAX_WAIT, MIN_LEASE};

    /// The limits checked at compile time are deadbolt's.
    #[test]
    fn limits_match_deadbolt() {
        assert_eq!(MIN_LEASE, deadbolt::MIN_LEASE);
        assert_eq!(MAX_LEASE, deadbolt::MAX_LEASE);
        assert_eq!(MAX_WAIT, deadbolt::MAX_WAIT);
        assert_eq!(deadbolt::MIN_LEASE, Duration::from_millis(10));
        assert_eq!(
            humantime::parse_duration("24h").unwrap(),
            deadbolt::MAX_LEASE
        );
    }

    #[test]
    fn expands_to_with_lock() {
        let args = quote::quote!(key = "likes:{id}", client = self.locks, lease = "3s");
        let item = quote::quote! {
            async fn like(&self, id: i64) -> Result<(), E> { Ok(()) }
        };
        let out = super::locked(args, item).to_string();
        assert!(
            out.contains(":: std :: format ! (\"likes:{}\" , id)"),
            "{out}"
        );
        assert!(out.contains("with_lock"), "{out}");
        assert!(
            out.contains(
                ":: deadbolt :: Lease :: Fixed (:: std :: time :: Duration :: from_nanos \
                 (3000000000u64))"
            ),
            "{out}"
        );
    }
}
