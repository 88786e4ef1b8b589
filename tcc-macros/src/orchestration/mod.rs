//! `tcc!`: an orchestration declared inline, typed and inline services
//! together, with the orchestrator's settings.

mod expand;
mod parse;

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::Parser;

use crate::context::Errors;

/// The whole macro: parse (which checks as it reads), then expand.
pub(crate) fn tcc(input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let parsed =
        (|stream: syn::parse::ParseStream| parse::orchestration(stream, &mut errors)).parse2(input);
    let result = parsed.and_then(|orchestration| errors.finish().map(|()| orchestration));
    match result {
        Ok(orchestration) => expand::orchestration(&orchestration),
        Err(error) => error_expression(error),
    }
}

/// The errors as one expression of rustc's error type: the last error is
/// the block's value, so `tcc! { .. }.await?` adds no follow-on errors.
fn error_expression(error: syn::Error) -> TokenStream {
    let mut errors: Vec<TokenStream> = error.into_iter().map(|e| e.to_compile_error()).collect();
    let last = errors.pop();
    quote! {
        {
            #(#errors;)*
            (#last)
        }
    }
}
