//! ImageService handlers, one file per RPC, over the `image-store` crate.

pub mod image_fs_info;
pub mod image_list;
pub mod image_pull;
pub mod image_remove;
pub mod image_status;
