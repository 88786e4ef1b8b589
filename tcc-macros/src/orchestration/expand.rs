//! Builds the block's services and returns the future of its run.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::{Inline, Orchestration, PHASES, Service};

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
//         let __tcc_block = ::tcc::__private::Block::new().max_retries(3);
//         let __tcc_service_0 = {
//             let __tcc_value = flights;
//             ::tcc::__private::check(&__tcc_value); // "not a TCC service"
//             ::tcc::__private::Listed(__tcc_value).participant()
//         };
//         let __tcc_service_1 = ::tcc::__private::Inline::new("payment", move |__tcc_phase| {
//             match __tcc_phase {
//                 Phase::Try => Either::Left(/* t, checked: see `inline_phase` */),
//                 Phase::Confirm => Either::Right(Either::Left(/* c, checked */)),
//                 Phase::Cancel => Either::Right(Either::Right(/* x, checked */)),
//             }
//         });
//         let __tcc_service_2 = {
//             let log = Clone::clone(&log);
//             ::tcc::__private::Inline::new("audit", move |__tcc_phase| match __tcc_phase {
//                 Phase::Try => Either::Left(/* log.open(), checked, over a clone of `log` */),
//                 ..
//             })
//         };
//         ::tcc::__private::Block::start(__tcc_block.clone(), async move {
//             let __tcc_service_0 = &__tcc_service_0;
//             let __tcc_slot_0 = ::tcc::__private::pin!(::tcc::__private::Option::None);
//             ..
//             let __tcc_names = [::tcc::__private::Participant::name(__tcc_service_0), ..];
//             let mut __tcc_attempts_0 =
//                 ::tcc::__private::slot(__tcc_service_0, __tcc_slot_0, move |__tcc_phase| {
//                     ::tcc::__private::Participant::phase(__tcc_service_0, __tcc_phase)
//                 });
//             ..
//             let mut __tcc_members = [::tcc::__private::member(&mut __tcc_attempts_0), ..];
//             __tcc_block.run(&__tcc_names, &mut __tcc_members).await
//         })
//     }
//
// Each service's phase futures run in a slot pinned inside the block's own
// future, and the engine walks the members, each pointing at its slot as a
// `&mut dyn Attempts`, in an array on the block's stack: a run allocates
// nothing per service.
pub(crate) fn orchestration(orchestration: &Orchestration) -> TokenStream {
    let durable = orchestration.settings.iter().any(|s| s.key == "log");
    let values = orchestration.services.iter().map(|service| match service {
        // Spanned on the value, so "`X` is not a TCC service" points at it,
        // once: a value that is not a service becomes a stand-in that is.
        // In a durable block, the value goes into the log too: one that
        // cannot be rebuilt after a crash is "not recoverable", once.
        Service::Typed(value) if durable => quote_spanned! {value.span()=>
            {
                let __tcc_value = #value;
                ::tcc::__private::check(&__tcc_value);
                ::tcc::__private::check_durable(&__tcc_value);
                #[allow(unused_imports)]
                use ::tcc::__private::{IsNotParticipant as _, IsParticipant as _};
                ::tcc::__private::Listed(::tcc::__private::Durable(__tcc_value)).participant()
            }
        },
        Service::Typed(value) => quote_spanned! {value.span()=>
            {
                let __tcc_value = #value;
                ::tcc::__private::check(&__tcc_value);
                #[allow(unused_imports)]
                use ::tcc::__private::{IsNotParticipant as _, IsParticipant as _};
                ::tcc::__private::Listed(__tcc_value).participant()
            }
        },
        Service::Inline(inline) => inline_service(inline),
    });
    let settings = orchestration.settings.iter().map(|setting| {
        let (key, value) = (&setting.key, &setting.value);
        let value = quote_spanned!(value.span()=> #value);
        quote!(.#key(#value))
    });
    let count = orchestration.services.len();
    let services: Vec<_> = (0..count)
        .map(|i| format_ident!("__tcc_service_{}", i))
        .collect();
    let slots: Vec<_> = (0..count)
        .map(|i| format_ident!("__tcc_slot_{}", i))
        .collect();
    let services2 = &services;
    let attempts: Vec<_> = (0..count)
        .map(|i| format_ident!("__tcc_attempts_{}", i))
        .collect();
    quote! {
        {
            let __tcc_block = ::tcc::__private::Block::new() #(#settings)*;
            #(let #services = #values;)*
            ::tcc::__private::Block::start(::core::clone::Clone::clone(&__tcc_block), async move {
                #(let #services = &#services;)*
                #(let #slots = ::tcc::__private::pin!(::tcc::__private::Option::None);)*
                let __tcc_names = [#(::tcc::__private::Participant::name(#services2)),*];
                #(
                    let mut #attempts = ::tcc::__private::slot(#services2, #slots, move |__tcc_phase| {
                        ::tcc::__private::Participant::phase(#services2, __tcc_phase)
                    });
                )*
                let mut __tcc_members = [#(::tcc::__private::member(&mut #attempts)),*];
                __tcc_block.run(&__tcc_names, &mut __tcc_members).await
            })
        }
    }
}

/// One closure for the three phases, so the block's environment is captured
/// (moved) once per service; each phase expression runs anew per attempt.
/// The three futures become one type as the arms of a nested `Either`.
///
/// With `clone(a, b)`, the service moves in clones of `a` and `b` (the
/// caller keeps its own), and every attempt clones them again into an
/// `async move` block that evaluates and awaits the phase expression, so
/// that expression may borrow them freely.
fn inline_service(inline: &Inline) -> TokenStream {
    let name = &inline.name;
    let clones = &inline.clones;
    let [try_phase, confirm, cancel] =
        [0, 1, 2].map(|i| inline_phase(&inline.phases[i], PHASES[i], clones));
    quote! {
        {
            #(let #clones = ::core::clone::Clone::clone(&#clones);)*
            ::tcc::__private::Inline::new(#name, move |__tcc_phase: ::tcc::__private::Phase| {
                match __tcc_phase {
                    ::tcc::__private::Phase::Try => ::tcc::__private::Either::Left(#try_phase),
                    ::tcc::__private::Phase::Confirm => {
                        ::tcc::__private::Either::Right(::tcc::__private::Either::Left(#confirm))
                    }
                    ::tcc::__private::Phase::Cancel => {
                        ::tcc::__private::Either::Right(::tcc::__private::Either::Right(#cancel))
                    }
                }
            })
        }
    }
}

// Input: `confirm: wallet.debit(amount)`, in a service with `clone(wallet)`
// (without it, `__tcc_future` is the expression itself).
//
// Output, every token spanned on the expression:
//     {
//         let __tcc_future = {
//             let wallet = Clone::clone(&wallet);
//             async move {
//                 let __tcc_inner = wallet.debit(amount);
//                 ::tcc::__private::check_future(&__tcc_inner);
//                 { use ..; ::tcc::__private::Phased(__tcc_inner).future() }.await
//             }
//         };
//         ::tcc::__private::check_phase(&__tcc_future);
//         ::tcc::__private::confirm_future_must_be_send(&__tcc_future);
//         { use ..; ::tcc::__private::Phased(__tcc_future).inline_phase() }
//     }
//
// A phase that fails a check (not a future, not of `Result<(), E>`, an `E`
// that is not an error) becomes a stand-in future, so its one error, on the
// expression, is the only one.
fn inline_phase(expr: &syn::Expr, phase: &str, clones: &[syn::Ident]) -> TokenStream {
    let span = expr.span();
    let must_be_send = format_ident!("{}_future_must_be_send", phase, span = span);
    let future = if clones.is_empty() {
        quote_spanned!(span=> #expr)
    } else {
        let clones = clones.iter().map(|name| {
            // A phase need not use every handle of the list.
            quote! {
                #[allow(unused_variables)]
                let #name = ::core::clone::Clone::clone(&#name);
            }
        });
        quote_spanned! {span=>
            {
                #(#clones)*
                async move {
                    let __tcc_inner = #expr;
                    ::tcc::__private::check_future(&__tcc_inner);
                    {
                        #[allow(unused_imports)]
                        use ::tcc::__private::{IsFuture as _, IsNotFuture as _};
                        ::tcc::__private::Phased(__tcc_inner).future()
                    }
                    .await
                }
            }
        }
    };
    quote_spanned! {span=>
        {
            let __tcc_future = #future;
            ::tcc::__private::check_phase(&__tcc_future);
            ::tcc::__private::#must_be_send(&__tcc_future);
            {
                #[allow(unused_imports)]
                use ::tcc::__private::{IsInlinePhase as _, IsNotPhase as _};
                ::tcc::__private::Phased(__tcc_future).inline_phase()
            }
        }
    }
}
