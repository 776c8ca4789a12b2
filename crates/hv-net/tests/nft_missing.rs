//! A missing `nft` binary is a clear, typed error (its own test binary: it sets `HV_NFT`).

use hv_net::nft::{Nft, NftError};

#[test]
fn missing_nft_is_a_typed_error() {
    std::env::set_var("HV_NFT", "/nonexistent/nft");
    let err = Nft::locate().unwrap_err();
    assert!(matches!(err, NftError::NotFound), "{err:?}");
    assert!(err.to_string().contains("nftables package"), "{err}");
    let err = Nft::at("/nonexistent/nft").tables().unwrap_err();
    assert!(matches!(err, NftError::Spawn { .. }), "{err:?}");
}
