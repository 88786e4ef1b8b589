//! Emits the impl block unchanged (phase attributes stripped) and the
//! runtime's service trait for its type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::{Args, Phase, ServiceImpl};

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
//             ::tcc::__private::erase(Self::hold(self))
//         }
//         ... confirm, cancel ...
//         fn max_retries(&self) -> Option<u32> { Some(3) }
//     }
pub(crate) fn service(service: &ServiceImpl, args: &Args) -> TokenStream {
    let item = &service.item;
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
    let phases = Phase::ALL.map(|phase| {
        let method = service
            .phases
            .iter()
            .find(|m| m.phase == phase)
            .expect("validated: every phase has a method");
        let user_method = &method.sig.ident;
        let trait_method = syn::Ident::new(phase.attribute(), user_method.span());
        // Spanned on the user's method, so a wrong error type or a future that
        // is not `Send` is reported once, on its name.
        quote_spanned! {user_method.span()=>
            fn #trait_method(&self) -> impl ::tcc::__private::Future<
                Output = ::tcc::__private::Result<(), ::tcc::__private::BoxError>,
            > + ::core::marker::Send {
                ::tcc::__private::erase(Self::#user_method(self))
            }
        }
    });
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
