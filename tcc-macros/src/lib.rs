//! Procedural macros of the [`tcc`](https://docs.rs/tcc) crate. Use them
//! through `tcc`, which re-exports them and documents them with examples:
//! [`tcc_service`] and [`tcc!`].

#![forbid(unsafe_code)]

mod context;
mod orchestration;

mod service;

use proc_macro::TokenStream;

/// Makes an inherent impl block a TCC service; see `tcc::tcc_service`.
#[proc_macro_attribute]
pub fn tcc_service(args: TokenStream, input: TokenStream) -> TokenStream {
    service::tcc_service(args.into(), input.into()).into()
}

/// Runs an orchestration declared inline; see `tcc::tcc!`.
#[proc_macro]
pub fn tcc(input: TokenStream) -> TokenStream {
    orchestration::tcc(input.into()).into()
}

/// Marks the Try method of a `#[tcc_service]` impl block; see
/// `tcc::tcc_service`. Anywhere else it is an error.
#[proc_macro_attribute]
pub fn try_phase(_args: TokenStream, input: TokenStream) -> TokenStream {
    service::misplaced("try_phase", input.into()).into()
}

/// Marks the Confirm method of a `#[tcc_service]` impl block; see
/// `tcc::tcc_service`. Anywhere else it is an error.
#[proc_macro_attribute]
pub fn confirm(_args: TokenStream, input: TokenStream) -> TokenStream {
    service::misplaced("confirm", input.into()).into()
}

/// Marks the Cancel method of a `#[tcc_service]` impl block; see
/// `tcc::tcc_service`. Anywhere else it is an error.
#[proc_macro_attribute]
pub fn cancel(_args: TokenStream, input: TokenStream) -> TokenStream {
    service::misplaced("cancel", input.into()).into()
}
