//! `#[tcc_service]`: implements the runtime's service trait for an inherent
//! impl block whose methods carry `#[try_phase]`, `#[confirm]` and `#[cancel]`.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Item;

use crate::errors::Errors;

/// The whole macro: parse, validate, then expand. On any error the impl block
/// is still emitted, phase attributes stripped, with a stand-in impl of the
/// service trait, so the user sees only the errors that matter and none of
/// rustc's follow-on ones.
pub(crate) fn tcc_service(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(args, &mut errors);
    let item = match syn::parse2::<syn::Item>(input.clone()) {
        Ok(item) => item,
        Err(error) => return with_error(input, error),
    };
    let service = match parse::item(item, &mut errors) {
        Ok(service) => service,
        // A trait impl still gets the stand-in service impl, unless it is
        // one itself, or has generics (which the trait may be the only one
        // to use: the stand-in would leave them unconstrained).
        Err(item) => match *item {
            Item::Impl(item)
                if item.generics.params.is_empty() && !implements_tcc_service(&item) =>
            {
                return with_errors(expand::fallback(&item, &args), errors);
            }
            item => return with_errors(item, errors),
        },
    };
    validate::service(&service, &mut errors);
    match errors.finish() {
        Ok(()) => expand::service(&service, &args),
        Err(error) => with_error(expand::fallback(&service.item, &args), error),
    }
}

/// Whether `item` is `impl TccService for ..`, under any path.
fn implements_tcc_service(item: &syn::ItemImpl) -> bool {
    item.trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .is_some_and(|last| last.ident == "TccService")
}

fn with_errors(item: impl ToTokens, errors: Errors) -> TokenStream {
    match errors.finish() {
        Ok(()) => item.into_token_stream(),
        Err(error) => with_error(item.into_token_stream(), error),
    }
}

fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

/// A phase attribute that no `#[tcc_service]` took off: it is on an item
/// outside such an impl block. The item is emitted as it is, with the error.
pub(crate) fn misplaced(phase: &str, input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        format_args!("#[{phase}] must be on a method of an impl block marked #[tcc_service]"),
    );
    with_error(input, error)
}
