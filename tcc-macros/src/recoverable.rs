//! `#[derive(Recoverable)]`: a service's data fields are saved in the
//! transaction log, its `#[recoverable(resource)]` fields come back from the
//! application's resources.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

use crate::errors::Errors;

/// One field of the struct, as the derive reads it.
struct Field {
    ident: Ident,
    ty: Type,
    role: Role,
}

enum Role {
    /// Provided by the application at start, fetched by type and, when
    /// two resources share a type, by name; never saved.
    Resource { name: Option<String> },
    /// Saved under `key`; `default` when older data may lack it.
    Data { key: String, default: bool },
}

/// `#[recoverable(kind = "..")]` on the struct, `#[recoverable(resource)]`,
/// `#[recoverable(resource = "..")]`, `#[recoverable(default)]` and
/// `#[recoverable(rename = "..")]` on fields.
pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let mut errors = Errors::default();
    let kind = kind(&input, &mut errors);
    let fields = fields(&input, &mut errors);
    match errors.finish() {
        Ok(()) => expand(&input, &kind, &fields),
        Err(error) => {
            // The fallback impl keeps the type usable, so that only these
            // errors show, not "`Debit` is not recoverable" wherever it is
            // used.
            let fallback = fallback(&input);
            let error = error.to_compile_error();
            quote!(#fallback #error)
        }
    }
}

fn kind(input: &DeriveInput, errors: &mut Errors) -> String {
    let mut kind = input.ident.to_string();
    for attribute in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("recoverable"))
    {
        let parsed = attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("kind") {
                let value: LitStr = meta.value()?.parse()?;
                kind = value.value();
                Ok(())
            } else {
                Err(meta.error(
                    "unknown argument of #[recoverable] on a struct; the argument is `kind = \"..\"`",
                ))
            }
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    kind
}

fn fields(input: &DeriveInput, errors: &mut Errors) -> Vec<Field> {
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => &named.named,
            _ => {
                errors.error_spanned_by(
                    &input.ident,
                    "#[derive(Recoverable)] needs named fields: they are saved by name",
                );
                return Vec::new();
            }
        },
        _ => {
            errors.error_spanned_by(
                &input.ident,
                "#[derive(Recoverable)] must be on a struct with named fields",
            );
            return Vec::new();
        }
    };
    named
        .iter()
        .filter_map(|field| {
            let ident = field.ident.clone()?;
            let mut resource = false;
            let mut resource_name = None;
            let mut default = false;
            let mut key = ident.to_string();
            for attribute in field.attrs.iter().filter(|a| a.path().is_ident("recoverable")) {
                let parsed = attribute.parse_nested_meta(|meta| {
                    if meta.path.is_ident("resource") {
                        resource = true;
                        if meta.input.peek(syn::Token![=]) {
                            resource_name = Some(resource_name_of(meta.value()?)?);
                        }
                    } else if meta.path.is_ident("default") {
                        default = true;
                    } else if meta.path.is_ident("rename") {
                        key = meta.value()?.parse::<LitStr>()?.value();
                    } else {
                        return Err(meta.error(
                            "unknown argument of #[recoverable] on a field; the arguments are `resource`, `resource = \"..\"`, `default` and `rename = \"..\"`",
                        ));
                    }
                    Ok(())
                });
                if let Err(error) = parsed {
                    errors.push(error);
                }
            }
            if resource && (default || ident != key) {
                errors.error_spanned_by(
                    &ident,
                    "a #[recoverable(resource)] field is not saved, so it takes no `default` nor `rename`",
                );
            }
            let role = if resource {
                Role::Resource { name: resource_name }
            } else {
                Role::Data { key, default }
            };
            Some(Field {
                ident,
                ty: field.ty.clone(),
                role,
            })
        })
        .collect()
}

/// The name in `resource = "inventory"`: a string, not empty.
fn resource_name_of(value: syn::parse::ParseStream<'_>) -> syn::Result<String> {
    let expected = "`resource = ..` takes the resource's name as a string, as given to `provide_named`: `resource = \"inventory\"`";
    let literal: LitStr = match value.parse::<syn::Lit>() {
        Ok(syn::Lit::Str(literal)) => literal,
        Ok(other) => return Err(syn::Error::new_spanned(other, expected)),
        Err(error) => return Err(syn::Error::new(error.span(), expected)),
    };
    let name = literal.value();
    if name.is_empty() {
        return Err(syn::Error::new_spanned(
            literal,
            "the resource's name is empty; name it as given to `provide_named`, or write `resource` alone to fetch it by type",
        ));
    }
    Ok(name)
}

// Input:
//     #[derive(Recoverable)]
//     #[recoverable(kind = "debit")]
//     struct Debit {
//         #[recoverable(resource)] db: Pool,
//         #[recoverable(resource = "audit")] audit: Pool,
//         account: String,
//     }
//
// Output:
//     impl ::tcc::Recoverable for Debit {
//         const KIND: &'static str = "debit";
//         fn save(&self) -> Result<Vec<u8>, BoxError> {
//             let mut __tcc_data = ::tcc::__private::SavedFields::new();
//             (&Field(&self.account)).save_into(&mut __tcc_data, "account")?;
//             __tcc_data.finish()
//         }
//         fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
//             let mut __tcc_data = ::tcc::__private::SavedFields::read(__tcc_bytes, "Debit")?;
//             Ok(Debit {
//                 db: ::core::clone::Clone::clone(resources.get::<Pool>()?),
//                 audit: ::core::clone::Clone::clone(resources.get_named::<Pool>("audit")?),
//                 account: (&Load::<String>::new()).load_from(&mut __tcc_data, "account")?
//                     .ok_or_else(|| missing("Debit", "account"))?,
//             })
//         }
//     }
//     const _: () = { fn __tcc_check() { ::tcc::__private::saved_field::<String>(); } };
//
// Saving and reading a field go through `SavedFields`, which serializes with
// serde_json only when the field's type allows it (an autoref fallback
// otherwise), so a field that cannot be saved gets exactly one error: the
// check's, on the field's type, in the user's words.
fn expand(input: &DeriveInput, kind: &str, fields: &[Field]) -> TokenStream {
    let name = &input.ident;
    let type_name = name.to_string();
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    let puts = fields.iter().filter_map(|field| {
        let Role::Data { key, .. } = &field.role else {
            return None;
        };
        let ident = &field.ident;
        Some(quote_spanned! {field.ty.span()=>
            #[allow(unused_imports)]
            use ::tcc::__private::{CanSave as _, CannotSave as _};
            (&::tcc::__private::Field(&self.#ident)).save_into(&mut __tcc_data, #key)?;
        })
    });
    let inits = fields.iter().map(|field| {
        let (ident, ty) = (&field.ident, &field.ty);
        match &field.role {
            Role::Resource { name: None } => quote_spanned! {ty.span()=>
                #ident: ::core::clone::Clone::clone(__tcc_resources.get::<#ty>()?)
            },
            Role::Resource { name: Some(name) } => quote_spanned! {ty.span()=>
                #ident: ::core::clone::Clone::clone(__tcc_resources.get_named::<#ty>(#name)?)
            },
            Role::Data { key, default } => {
                let missing = if *default {
                    quote_spanned!(ty.span()=> .unwrap_or_default())
                } else {
                    quote!(.ok_or_else(|| ::tcc::__private::missing(#type_name, #key))?)
                };
                quote_spanned! {ty.span()=>
                    #ident: {
                        #[allow(unused_imports)]
                        use ::tcc::__private::{CanLoad as _, CannotLoad as _};
                        (&::tcc::__private::Load::<#ty>::new())
                            .load_from(&mut __tcc_data, #key)?
                            #missing
                    }
                }
            }
        }
    });
    let checks = fields.iter().filter_map(|field| {
        let ty = &field.ty;
        matches!(field.role, Role::Data { .. })
            .then(|| quote_spanned!(ty.span()=> ::tcc::__private::saved_field::<#ty>();))
    });
    quote! {
        impl #impl_generics ::tcc::Recoverable for #name #type_generics #where_clause {
            const KIND: &'static str = #kind;

            fn save(&self) -> ::core::result::Result<::std::vec::Vec<u8>, ::tcc::BoxError> {
                let mut __tcc_data = ::tcc::__private::SavedFields::new();
                #(#puts)*
                __tcc_data.finish()
            }

            fn rebuild(
                __tcc_bytes: &[u8],
                __tcc_resources: &::tcc::Resources,
            ) -> ::core::result::Result<Self, ::tcc::BoxError> {
                #[allow(unused_mut, unused_variables)]
                let mut __tcc_data = ::tcc::__private::SavedFields::read(__tcc_bytes, #type_name)?;
                ::core::result::Result::Ok(#name { #(#inits,)* })
            }
        }

        const _: () = {
            #[allow(dead_code)]
            fn __tcc_check #impl_generics () #where_clause {
                #(#checks)*
            }
        };
    }
}

/// An impl that always fails, so that a type whose derive has errors is
/// still recoverable and no follow-on error asks for the derive.
fn fallback(input: &DeriveInput) -> TokenStream {
    let name = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        impl #impl_generics ::tcc::Recoverable for #name #type_generics #where_clause {
            const KIND: &'static str = "";
            fn save(&self) -> ::core::result::Result<::std::vec::Vec<u8>, ::tcc::BoxError> {
                ::core::result::Result::Err("#[derive(Recoverable)] failed".into())
            }
            fn rebuild(
                _: &[u8],
                _: &::tcc::Resources,
            ) -> ::core::result::Result<Self, ::tcc::BoxError> {
                ::core::result::Result::Err("#[derive(Recoverable)] failed".into())
            }
        }
    }
}
