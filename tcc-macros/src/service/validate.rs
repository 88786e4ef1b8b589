//! Checks the phase methods: exactly one of each phase, each an `async fn`
//! taking `&self` alone and returning `Result<(), E>`.

use quote::quote;
use syn::{FnArg, GenericParam, ReturnType, Signature, Type};

use super::parse::{Phase, PhaseMethod, ServiceImpl};
use crate::errors::Errors;

pub(crate) fn service(service: &ServiceImpl, errors: &mut Errors) {
    for phase in Phase::ALL {
        let mut methods = service.phases.iter().filter(|m| m.phase == phase);
        match methods.next() {
            None if service.misspelt.contains(&phase) => {}
            None => missing(service, phase, errors),
            Some(first) => {
                for again in methods {
                    errors.error_spanned_by(
                        &again.attr,
                        format_args!(
                            "#[{}] is already on `{}`; a service has exactly one #[{0}] method",
                            phase.attribute(),
                            first.sig.ident,
                        ),
                    );
                }
            }
        }
    }
    for method in &service.phases {
        signature(method, errors);
    }
}

fn missing(service: &ServiceImpl, phase: Phase, errors: &mut Errors) {
    let self_ty = &service.item.self_ty;
    let name = quote!(#self_ty).to_string().replace(' ', "");
    let what = match phase {
        Phase::Try => "reserves the resources",
        Phase::Confirm => "makes the reservation final",
        Phase::Cancel => "releases the reservation",
    };
    errors.error_spanned_by(
        self_ty,
        format_args!(
            "service `{name}` has no #[{attr}] method; add #[{attr}] to the `async fn` that {what}",
            attr = phase.attribute(),
        ),
    );
}

fn signature(method: &PhaseMethod, errors: &mut Errors) {
    let attr = method.phase.attribute();
    let sig: &Signature = &method.sig;
    if sig.asyncness.is_none() {
        let fn_token = &sig.fn_token;
        let tokens = match &sig.constness {
            Some(constness) => quote!(#constness #fn_token),
            None => quote!(#fn_token),
        };
        errors.error_spanned_by(tokens, format_args!("#[{attr}] must be on an `async fn`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.error_spanned_by(
            unsafety,
            format_args!("#[{attr}] method must not be `unsafe`"),
        );
    }
    let generic = sig
        .generics
        .params
        .iter()
        .filter(|param| !matches!(param, GenericParam::Lifetime(_)));
    for param in generic {
        errors.error_spanned_by(
            param,
            format_args!("#[{attr}] method must not have type or const parameters"),
        );
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => {
            let wrong = match (
                &receiver.reference,
                &receiver.mutability,
                &receiver.colon_token,
            ) {
                (Some(_), None, None) => None,
                (None, None, Some(_)) if is_ref_self(&receiver.ty) => None,
                (Some(_), Some(_), None) => Some("`&mut self`"),
                (None, _, None) => Some("`self`"),
                _ => Some("this receiver"),
            };
            if let Some(wrong) = wrong {
                errors.error_spanned_by(
                    receiver,
                    format_args!("#[{attr}] method must take `&self`, not {wrong}"),
                );
            }
            let extra: Vec<&FnArg> = inputs.collect();
            if let (Some(first), Some(last)) = (extra.first(), extra.last()) {
                errors.error_spanned_by(
                    quote!(#first #last),
                    format_args!(
                        "#[{attr}] method must take only `&self`; it runs once per attempt with no arguments, so keep what it needs in the service"
                    ),
                );
            }
        }
        _ => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            format_args!("#[{attr}] method must take `&self`"),
        )),
    }

    match &sig.output {
        ReturnType::Type(_, ty) if is_unit_result(ty) => {}
        ReturnType::Type(_, ty) => errors.error_spanned_by(
            ty,
            format_args!("#[{attr}] method must return `Result<(), E>`"),
        ),
        ReturnType::Default => errors.error_spanned_by(
            sig,
            format_args!("#[{attr}] method must return `Result<(), E>`"),
        ),
    }
}

/// `Result<(), E>`, or an alias such as `anyhow::Result<()>`. The error type
/// itself is checked by the compiler, on the generated call.
fn is_unit_result(ty: &Type) -> bool {
    let Type::Path(path) = ty else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    last.ident == "Result"
        && matches!(
            args.args.first(),
            Some(syn::GenericArgument::Type(Type::Tuple(unit))) if unit.elems.is_empty()
        )
}

/// `&Self` or `&'a Self`, as in `self: &Self`.
fn is_ref_self(ty: &Type) -> bool {
    match ty {
        Type::Reference(reference) => {
            reference.mutability.is_none()
                && matches!(&*reference.elem, Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self"))
        }
        _ => false,
    }
}
