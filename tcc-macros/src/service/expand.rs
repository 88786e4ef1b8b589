//! Emits the impl block unchanged (phase attributes stripped) and the
//! runtime's service trait for its type.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ItemImpl;
use syn::spanned::Spanned;

use super::parse::{Args, Phase, PhaseMethod, ServiceImpl};

// Input:
//     #[tcc_service(name = "flight", max_retries = 3)]
//     impl<T> Seats<T> {
//         #[try_phase] async fn hold(&self) -> Result<(), E> { ... }
//         #[confirm]   async fn book(&self) -> Result<(), E> { ... }
//         #[cancel]    async fn release(&self) -> Result<(), E> { ... }
//     }
//
// Output:
//     impl<T> Seats<T> {
//         async fn hold(&self) -> Result<(), E> { ... }
//         ...
//     }
//     impl<T> ::tcc::__private::TccService for Seats<T>
//     where
//         Seats<T>: Send + Sync + 'static,
//     {
//         fn service_name(&self) -> &str { "flight" }
//         fn try_phase(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
//             let __tcc_future = Self::hold(self);
//             ::tcc::__private::check_phase(&__tcc_future);                   // on `E`
//             ::tcc::__private::try_phase_future_must_be_send(&__tcc_future); // on `hold`
//             {
//                 use ::tcc::__private::{IsNotPhase as _, IsServicePhase as _};
//                 ::tcc::__private::Phased(__tcc_future).service_phase()
//             }
//         }
//         ... confirm, cancel ...
//         fn max_retries(&self) -> Option<u32> { Some(3) }
//     }
//
// A phase that fails a check becomes a stand-in future, so its one error is
// the only one.
pub(crate) fn service(service: &ServiceImpl, args: &Args) -> TokenStream {
    let phases = Phase::ALL.map(|phase| {
        let method = service
            .phases
            .iter()
            .find(|m| m.phase == phase)
            .expect("validated: every phase has a method");
        phase_method(method)
    });
    service_impl(&service.item, args, &phases)
}

// Input: an impl block under #[tcc_service] with errors, such as no
// #[cancel] method, or a trait impl under it.
//
// Output: the impl block, phase attributes stripped, and
//     impl ::tcc::__private::TccService for Seats {
//         fn service_name(&self) -> &str { "Seats" }
//         fn try_phase(&self) -> impl Future<..> + Send { ::tcc::__private::not_a_phase() }
//         ... confirm, cancel ...
//     }
//
// As thiserror's fallback: the type is still a service, so using it as one
// adds no "`Seats` is not a TCC service" to the errors that matter. Nothing
// runs it: the crate does not compile.
pub(crate) fn fallback(item: &ItemImpl, args: &Args) -> TokenStream {
    let phases = Phase::ALL.map(|phase| {
        let trait_method = syn::Ident::new(phase.attribute(), Span::call_site());
        quote! {
            fn #trait_method(&self) -> impl ::tcc::__private::Future<
                Output = ::tcc::__private::Result<(), ::tcc::__private::BoxError>,
            > + ::core::marker::Send {
                ::tcc::__private::not_a_phase()
            }
        }
    });
    service_impl(item, args, &phases)
}

/// The impl block and the service trait's impl for its type, with `phases`.
fn service_impl(item: &ItemImpl, args: &Args, phases: &[TokenStream; 3]) -> TokenStream {
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let predicates = where_clause.into_iter().flat_map(|w| &w.predicates);
    // Spanned on the type, so a type that is not `Send + Sync` is reported there.
    let bound = quote_spanned! {self_ty.span()=>
        #self_ty: ::core::marker::Send + ::core::marker::Sync + 'static
    };

    let name = match &args.name {
        Some(name) => name.value(),
        None => type_name(self_ty),
    };
    let max_retries = args.max_retries.as_ref().map(|n| {
        let value = quote_spanned!(n.span()=> ::core::option::Option::Some(#n));
        quote! {
            fn max_retries(&self) -> ::core::option::Option<u32> {
                #value
            }
        }
    });

    quote! {
        #item

        impl #impl_generics ::tcc::__private::TccService for #self_ty
        where
            #(#predicates,)*
            #bound
        {
            fn service_name(&self) -> &str {
                #name
            }
            #(#phases)*
            #max_retries
        }
    }
}

/// The trait method that runs `method`, checked. Each check is spanned on
/// the user's token it is about: an error type that is not an error on
/// that type in the signature, a future that is not `Send` on the method's
/// name.
fn phase_method(method: &PhaseMethod) -> TokenStream {
    let user_method = &method.sig.ident;
    let span = user_method.span();
    let trait_method = syn::Ident::new(method.phase.attribute(), span);
    let must_be_send = format_ident!(
        "{}_future_must_be_send",
        method.phase.attribute(),
        span = span
    );
    let error_span = error_type(&method.sig).map_or(span, |error| error.span());
    let check = quote_spanned! {error_span=>
        ::tcc::__private::check_phase(&__tcc_future);
    };
    quote_spanned! {span=>
        fn #trait_method(&self) -> impl ::tcc::__private::Future<
            Output = ::tcc::__private::Result<(), ::tcc::__private::BoxError>,
        > + ::core::marker::Send {
            let __tcc_future = Self::#user_method(self);
            #check
            ::tcc::__private::#must_be_send(&__tcc_future);
            {
                #[allow(unused_imports)]
                use ::tcc::__private::{IsNotPhase as _, IsServicePhase as _};
                ::tcc::__private::Phased(__tcc_future).service_phase()
            }
        }
    }
}

/// The `E` of a signature's `Result<(), E>`, when it is written there (not
/// with an alias such as `anyhow::Result<()>`).
fn error_type(sig: &syn::Signature) -> Option<&syn::Type> {
    let syn::ReturnType::Type(_, ty) = &sig.output else {
        return None;
    };
    let syn::Type::Path(path) = &**ty else {
        return None;
    };
    let syn::PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
        return None;
    };
    match args.args.iter().nth(1)? {
        syn::GenericArgument::Type(error) => Some(error),
        _ => None,
    }
}

/// The default service name: the type's name, without its generics.
fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(path) => match path.path.segments.last() {
            Some(segment) => segment.ident.to_string(),
            None => quote!(#ty).to_string(),
        },
        other => quote!(#other).to_string().replace(' ', ""),
    }
}
