//! `tcc!`: an orchestration declared inline, typed and inline services
//! together, with the orchestrator's settings.

mod expand;
mod parse;

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::{ParseStream, Parser};

use crate::errors::Errors;

/// The whole macro: parse (which checks as it reads), then expand.
pub(crate) fn tcc(input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let parsed = (|stream: ParseStream| parse::orchestration(stream, &mut errors)).parse2(input);
    let orchestration = match parsed {
        Ok(orchestration) => orchestration,
        Err(error) => return error_expression(error, None),
    };
    match errors.finish() {
        Ok(()) => expand::orchestration(&orchestration),
        Err(error) => error_expression(error, Some(&orchestration)),
    }
}

// Input: the errors, and the user's expressions when the input parsed.
//
// Output:
//     {
//         let _ = || { let _ = expr; ... };
//         ::core::compile_error! { "..." };
//         (::core::compile_error! { "..." })
//     }
//
// The block's value has rustc's error type, so `tcc! { .. }.await?` adds no
// follow-on errors; the closure, never called, keeps the user's expressions
// type-checked and their names used, so no "unused import" or "unused
// variable" warnings join the errors.
fn error_expression(
    error: syn::Error,
    orchestration: Option<&parse::Orchestration>,
) -> TokenStream {
    let mut errors: Vec<TokenStream> = error.into_iter().map(|e| e.to_compile_error()).collect();
    let last = errors.pop();
    let exprs = orchestration.map(|o| {
        let settings = o.settings.iter().map(|s| &s.value);
        let services = o.services.iter().flat_map(|service| match service {
            parse::Service::Typed(value) => std::slice::from_ref(value),
            parse::Service::Inline(inline) => &inline.phases[..],
        });
        let exprs = settings.chain(services).chain(&o.rejected);
        quote!(let _ = || { #(let _ = #exprs;)* };)
    });
    quote! {
        {
            #exprs
            #(#errors;)*
            (#last)
        }
    }
}
