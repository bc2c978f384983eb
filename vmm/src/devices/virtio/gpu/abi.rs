//! virtio-gpu's guest-visible structures, as `virtio-bindings` defines them, made readable
//! from and writable to guest memory with `ByteValued` (see `block/abi.rs` for why each
//! gets a transparent wrapper). Every one is `#[repr(C)]` with only integer fields and
//! explicit padding fields, so it has no implicit padding and every byte pattern is valid.

use virtio_bindings::virtio_gpu::*;
use vm_memory::ByteValued;

macro_rules! abi {
    ($($(#[$m:meta])* $name:ident($inner:ty);)*) => {$(
        $(#[$m])*
        #[derive(Clone, Copy, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);
        // SAFETY: see the module docs: `#[repr(C)]`, integer fields only, no implicit
        // padding, so every byte pattern is a valid value.
        unsafe impl ByteValued for $name {}
    )*};
}

abi! {
    /// `struct virtio_gpu_ctrl_hdr`: starts every request and response.
    CtrlHeader(virtio_gpu_ctrl_hdr);
    /// `struct virtio_gpu_resource_create_2d`.
    ResourceCreate2d(virtio_gpu_resource_create_2d);
    /// `struct virtio_gpu_resource_unref`.
    ResourceUnref(virtio_gpu_resource_unref);
    /// `struct virtio_gpu_set_scanout`.
    SetScanout(virtio_gpu_set_scanout);
    /// `struct virtio_gpu_resource_flush`.
    ResourceFlush(virtio_gpu_resource_flush);
    /// `struct virtio_gpu_transfer_to_host_2d`.
    TransferToHost2d(virtio_gpu_transfer_to_host_2d);
    /// `struct virtio_gpu_resource_attach_backing` (followed by `nr_entries` entries).
    AttachBacking(virtio_gpu_resource_attach_backing);
    /// `struct virtio_gpu_mem_entry`.
    MemEntry(virtio_gpu_mem_entry);
    /// `struct virtio_gpu_resource_detach_backing`.
    DetachBacking(virtio_gpu_resource_detach_backing);
    /// `struct virtio_gpu_cmd_get_edid`.
    GetEdid(virtio_gpu_cmd_get_edid);
    /// `struct virtio_gpu_update_cursor` (also the layout of MOVE_CURSOR).
    UpdateCursor(virtio_gpu_update_cursor);
    /// `struct virtio_gpu_resp_display_info`.
    RespDisplayInfo(virtio_gpu_resp_display_info);
    /// `struct virtio_gpu_resp_edid`.
    RespEdid(virtio_gpu_resp_edid);
    /// `struct virtio_gpu_config`: the device's configuration space.
    GpuConfig(virtio_gpu_config);
}

/// Request and response types (`VIRTIO_GPU_CMD_*`, `VIRTIO_GPU_RESP_*`) without the
/// bindgen enum prefix.
pub mod ty {
    #![allow(missing_docs)]
    use virtio_bindings::virtio_gpu::*;

    pub const GET_DISPLAY_INFO: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO;
    pub const RESOURCE_CREATE_2D: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D;
    pub const RESOURCE_UNREF: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF;
    pub const SET_SCANOUT: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT;
    pub const RESOURCE_FLUSH: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH;
    pub const TRANSFER_TO_HOST_2D: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D;
    pub const RESOURCE_ATTACH_BACKING: u32 =
        virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING;
    pub const RESOURCE_DETACH_BACKING: u32 =
        virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING;
    pub const GET_EDID: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_EDID;
    pub const UPDATE_CURSOR: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_UPDATE_CURSOR;
    pub const MOVE_CURSOR: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_MOVE_CURSOR;

    pub const OK_NODATA: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA;
    pub const OK_DISPLAY_INFO: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
    pub const OK_EDID: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID;
    pub const ERR_UNSPEC: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC;
    pub const ERR_OUT_OF_MEMORY: u32 = virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY;
    pub const ERR_INVALID_SCANOUT_ID: u32 =
        virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID;
    pub const ERR_INVALID_RESOURCE_ID: u32 =
        virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID;
    pub const ERR_INVALID_PARAMETER: u32 =
        virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;
}
