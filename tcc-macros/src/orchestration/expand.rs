//! Builds the orchestrator and returns the future of its run.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::{Inline, Orchestration, Service};

// Input:
//     tcc! {
//         max_retries = 3;
//         flights,
//         "payment" => { try_phase: t, confirm: c, cancel: x },
//         "audit" => clone(log) { try_phase: log.open(), .. },
//     }
//
// Output:
//     {
//         let __tcc_orchestrator = ::tcc::__private::Orchestrator::new([
//             ::tcc::__private::service(flights),
//             ::tcc::__private::inline_service("payment", move |__tcc_phase| match __tcc_phase {
//                 Phase::Try => ::tcc::__private::boxed(t),
//                 Phase::Confirm => ::tcc::__private::boxed(c),
//                 Phase::Cancel => ::tcc::__private::boxed(x),
//             }),
//             {
//                 let log = Clone::clone(&log);
//                 ::tcc::__private::inline_service("audit", move |__tcc_phase| match __tcc_phase {
//                     Phase::Try => {
//                         let log = Clone::clone(&log);
//                         ::tcc::__private::boxed(async move { (log.open()).await })
//                     }
//                     ..
//                 })
//             },
//         ])
//         .max_retries(3);
//         async move { __tcc_orchestrator.orchestrate().await }
//     }
pub(crate) fn orchestration(orchestration: &Orchestration) -> TokenStream {
    let services = orchestration.services.iter().map(|service| match service {
        // Spanned on the value, so "`X` is not a TCC service" points at it.
        Service::Typed(value) => quote_spanned! {value.span()=>
            ::tcc::__private::service(#value)
        },
        Service::Inline(inline) => inline_service(inline),
    });
    let settings = orchestration.settings.iter().map(|setting| {
        let (key, value) = (&setting.key, &setting.value);
        let value = quote_spanned!(value.span()=> #value);
        quote!(.#key(#value))
    });
    quote! {
        {
            let __tcc_orchestrator = ::tcc::__private::Orchestrator::new([
                #(#services,)*
            ])
            #(#settings)*;
            async move { __tcc_orchestrator.orchestrate().await }
        }
    }
}

/// One closure for the three phases, so the block's environment is captured
/// (moved) once per service; each phase expression runs anew per attempt.
///
/// With `clone(a, b)`, the service moves in clones of `a` and `b` (the
/// caller keeps its own), and every attempt clones them again into an
/// `async move` block that evaluates and awaits the phase expression, so
/// that expression may borrow them freely.
fn inline_service(inline: &Inline) -> TokenStream {
    let name = &inline.name;
    let clones = &inline.clones;
    let [try_phase, confirm, cancel] = inline.phases.each_ref().map(|expr| {
        if clones.is_empty() {
            quote_spanned! {expr.span()=>
                ::tcc::__private::boxed(#expr)
            }
        } else {
            let future = quote_spanned!(expr.span()=> (#expr).await);
            quote! {
                {
                    // A phase need not use every handle of the list.
                    #(
                        #[allow(unused_variables)]
                        let #clones = ::core::clone::Clone::clone(&#clones);
                    )*
                    ::tcc::__private::boxed(async move { #future })
                }
            }
        }
    });
    quote! {
        {
            #(let #clones = ::core::clone::Clone::clone(&#clones);)*
            ::tcc::__private::inline_service(#name, move |__tcc_phase: ::tcc::__private::Phase| {
                match __tcc_phase {
                    ::tcc::__private::Phase::Try => #try_phase,
                    ::tcc::__private::Phase::Confirm => #confirm,
                    ::tcc::__private::Phase::Cancel => #cancel,
                }
            })
        }
    }
}
