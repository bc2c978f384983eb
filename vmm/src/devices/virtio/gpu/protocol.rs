//! virtio-gpu requests as bytes → a typed [`Request`] or a [`Refusal`]; and [`Response`]s
//! → bytes.
//!
//! Parsing only checks what the bytes alone can tell: the header, the queue the command
//! belongs to, the body's length, the number of backing entries against
//! [`MAX_BACKING_ENTRIES`] (before anything proportional to it is allocated). Everything
//! that needs the device's state (resource ids, bounds, guest RAM) is the executor's job
//! (`state.rs`).

use std::mem::size_of;

use virtio_bindings::virtio_gpu::{VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_MAX_SCANOUTS};
use vm_memory::ByteValued;

use super::abi::{self, ty, CtrlHeader};
use crate::display::{Rect, MAX_EDID_BYTES};

/// Bytes in `struct virtio_gpu_ctrl_hdr`.
pub const HEADER_SIZE: usize = size_of::<CtrlHeader>();
/// Most backing entries one resource may have (a 4K XRGB image in 4 KiB pages takes
/// 8100; Linux merges contiguous pages, so real guests send fewer).
pub const MAX_BACKING_ENTRIES: u32 = 16384;

/// Which queue a request came on: each accepts only its own commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// controlq: resources, scanout, display info.
    Control,
    /// cursorq: UPDATE_CURSOR, MOVE_CURSOR.
    Cursor,
}

/// What the response header echoes from the request header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The command type.
    pub kind: u32,
    /// `VIRTIO_GPU_FLAG_*`.
    pub flags: u32,
    /// Fence to signal (when `flags` has `VIRTIO_GPU_FLAG_FENCE`).
    pub fence_id: u64,
    /// 3D context (always 0 without virgl; echoed anyway).
    pub ctx_id: u32,
}

/// A scatter-list entry of RESOURCE_ATTACH_BACKING, as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Cursor position of UPDATE_CURSOR / MOVE_CURSOR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorPos {
    /// Scanout (must be 0).
    pub scanout_id: u32,
    /// Position; a pointer partly off the left or top edge arrives negative, as u32.
    pub x: u32,
    /// See `x`.
    pub y: u32,
}

/// The commands of virtio-gpu 2D (what Linux 6.1 sends without virgl and blobs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// GET_DISPLAY_INFO.
    GetDisplayInfo,
    /// GET_EDID.
    GetEdid {
        /// Scanout.
        scanout: u32,
    },
    /// RESOURCE_CREATE_2D.
    ResourceCreate2d {
        /// New id.
        resource_id: u32,
        /// `VIRTIO_GPU_FORMAT_*`.
        format: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// RESOURCE_UNREF.
    ResourceUnref {
        /// Id.
        resource_id: u32,
    },
    /// SET_SCANOUT.
    SetScanout {
        /// Scanout.
        scanout_id: u32,
        /// Resource shown (0: disable the scanout).
        resource_id: u32,
        /// Part of the resource shown.
        rect: Rect,
    },
    /// RESOURCE_FLUSH.
    ResourceFlush {
        /// Id.
        resource_id: u32,
        /// Damaged rectangle (resource coordinates).
        rect: Rect,
    },
    /// TRANSFER_TO_HOST_2D.
    TransferToHost2d {
        /// Id.
        resource_id: u32,
        /// Rectangle (resource coordinates).
        rect: Rect,
        /// Offset of its first pixel in the backing.
        offset: u64,
    },
    /// RESOURCE_ATTACH_BACKING.
    AttachBacking {
        /// Id.
        resource_id: u32,
        /// Scatter list (at most [`MAX_BACKING_ENTRIES`]).
        entries: Vec<MemEntry>,
    },
    /// RESOURCE_DETACH_BACKING.
    DetachBacking {
        /// Id.
        resource_id: u32,
    },
    /// UPDATE_CURSOR.
    UpdateCursor {
        /// Where.
        pos: CursorPos,
        /// Image (0: hide).
        resource_id: u32,
        /// Hot spot x.
        hot_x: u32,
        /// Hot spot y.
        hot_y: u32,
    },
    /// MOVE_CURSOR.
    MoveCursor {
        /// Where.
        pos: CursorPos,
    },
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its header.
    pub header: Header,
    /// What to do.
    pub command: Command,
}

/// The error responses (`VIRTIO_GPU_RESP_ERR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or unsupported request, or a backing the device cannot use.
    Unspec,
    /// A limit on resources, bytes or backing entries would be exceeded.
    OutOfMemory,
    /// A scanout other than 0.
    InvalidScanoutId,
    /// Resource id 0, unknown or (on create) already used.
    InvalidResourceId,
    /// A bad format, size, rectangle or scatter-list entry.
    InvalidParameter,
}

impl ErrorCode {
    /// The response type.
    pub fn code(self) -> u32 {
        match self {
            Self::Unspec => ty::ERR_UNSPEC,
            Self::OutOfMemory => ty::ERR_OUT_OF_MEMORY,
            Self::InvalidScanoutId => ty::ERR_INVALID_SCANOUT_ID,
            Self::InvalidResourceId => ty::ERR_INVALID_RESOURCE_ID,
            Self::InvalidParameter => ty::ERR_INVALID_PARAMETER,
        }
    }
}

/// A request that cannot be carried out, with the reason for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The request's header, if it had a whole one (so fences are still echoed).
    pub header: Option<Header>,
    /// The answer.
    pub error: ErrorCode,
    /// Why.
    pub reason: &'static str,
}

/// What the device answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// OK_NODATA.
    NoData,
    /// OK_DISPLAY_INFO for scanout 0.
    DisplayInfo {
        /// Mode width.
        width: u32,
        /// Mode height.
        height: u32,
    },
    /// OK_EDID (at most [`MAX_EDID_BYTES`]; longer is cut).
    Edid(Vec<u8>),
    /// An error.
    Error(ErrorCode),
}

impl Response {
    /// The response type.
    pub fn code(&self) -> u32 {
        match self {
            Self::NoData => ty::OK_NODATA,
            Self::DisplayInfo { .. } => ty::OK_DISPLAY_INFO,
            Self::Edid(_) => ty::OK_EDID,
            Self::Error(e) => e.code(),
        }
    }
}

fn le_rect(r: &virtio_bindings::virtio_gpu::virtio_gpu_rect) -> Rect {
    Rect::new(
        u32::from_le(r.x),
        u32::from_le(r.y),
        u32::from_le(r.width),
        u32::from_le(r.height),
    )
}

/// Reads a `T` from the start of `bytes`; `None` if they are too short.
fn read<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut obj = T::default();
    let n = obj.as_slice().len();
    obj.as_mut_slice().copy_from_slice(bytes.get(..n)?);
    Some(obj)
}

/// Parses one request (the chain's readable bytes) that came on `queue`.
pub fn parse(queue: QueueKind, bytes: &[u8]) -> Result<Request, Refusal> {
    let refuse = |header, error, reason| Refusal {
        header,
        error,
        reason,
    };
    let Some(h) = read::<CtrlHeader>(bytes) else {
        return Err(refuse(
            None,
            ErrorCode::Unspec,
            "request shorter than its header",
        ));
    };
    let header = Header {
        kind: u32::from_le(h.0.type_),
        flags: u32::from_le(h.0.flags),
        fence_id: u64::from_le(h.0.fence_id),
        ctx_id: u32::from_le(h.0.ctx_id),
    };
    let hdr = Some(header);
    let short = || refuse(hdr, ErrorCode::Unspec, "request shorter than its command");
    let on_queue = match header.kind {
        ty::UPDATE_CURSOR | ty::MOVE_CURSOR => QueueKind::Cursor,
        _ => QueueKind::Control,
    };
    if on_queue != queue {
        return Err(refuse(hdr, ErrorCode::Unspec, "command on the wrong queue"));
    }
    let command = match header.kind {
        ty::GET_DISPLAY_INFO => Command::GetDisplayInfo,
        ty::GET_EDID => {
            let c: abi::GetEdid = read(bytes).ok_or_else(short)?;
            Command::GetEdid {
                scanout: u32::from_le(c.0.scanout),
            }
        }
        ty::RESOURCE_CREATE_2D => {
            let c: abi::ResourceCreate2d = read(bytes).ok_or_else(short)?;
            Command::ResourceCreate2d {
                resource_id: u32::from_le(c.0.resource_id),
                format: u32::from_le(c.0.format),
                width: u32::from_le(c.0.width),
                height: u32::from_le(c.0.height),
            }
        }
        ty::RESOURCE_UNREF => {
            let c: abi::ResourceUnref = read(bytes).ok_or_else(short)?;
            Command::ResourceUnref {
                resource_id: u32::from_le(c.0.resource_id),
            }
        }
        ty::SET_SCANOUT => {
            let c: abi::SetScanout = read(bytes).ok_or_else(short)?;
            Command::SetScanout {
                scanout_id: u32::from_le(c.0.scanout_id),
                resource_id: u32::from_le(c.0.resource_id),
                rect: le_rect(&c.0.r),
            }
        }
        ty::RESOURCE_FLUSH => {
            let c: abi::ResourceFlush = read(bytes).ok_or_else(short)?;
            Command::ResourceFlush {
                resource_id: u32::from_le(c.0.resource_id),
                rect: le_rect(&c.0.r),
            }
        }
        ty::TRANSFER_TO_HOST_2D => {
            let c: abi::TransferToHost2d = read(bytes).ok_or_else(short)?;
            Command::TransferToHost2d {
                resource_id: u32::from_le(c.0.resource_id),
                rect: le_rect(&c.0.r),
                offset: u64::from_le(c.0.offset),
            }
        }
        ty::RESOURCE_ATTACH_BACKING => {
            let c: abi::AttachBacking = read(bytes).ok_or_else(short)?;
            let n = u32::from_le(c.0.nr_entries);
            if n == 0 || n > MAX_BACKING_ENTRIES {
                return Err(refuse(
                    hdr,
                    ErrorCode::InvalidParameter,
                    "backing entry count outside 1..=MAX_BACKING_ENTRIES",
                ));
            }
            let start = size_of::<abi::AttachBacking>();
            let each = size_of::<abi::MemEntry>();
            // n <= 16384, so n * 16 cannot overflow.
            let list = bytes
                .get(start..)
                .and_then(|b| b.get(..n as usize * each))
                .ok_or_else(short)?;
            let entries = list
                .chunks_exact(each)
                .filter_map(read::<abi::MemEntry>)
                .map(|e| MemEntry {
                    addr: u64::from_le(e.0.addr),
                    len: u32::from_le(e.0.length),
                })
                .collect();
            Command::AttachBacking {
                resource_id: u32::from_le(c.0.resource_id),
                entries,
            }
        }
        ty::RESOURCE_DETACH_BACKING => {
            let c: abi::DetachBacking = read(bytes).ok_or_else(short)?;
            Command::DetachBacking {
                resource_id: u32::from_le(c.0.resource_id),
            }
        }
        ty::UPDATE_CURSOR | ty::MOVE_CURSOR => {
            let c: abi::UpdateCursor = read(bytes).ok_or_else(short)?;
            let pos = CursorPos {
                scanout_id: u32::from_le(c.0.pos.scanout_id),
                x: u32::from_le(c.0.pos.x),
                y: u32::from_le(c.0.pos.y),
            };
            if header.kind == ty::MOVE_CURSOR {
                Command::MoveCursor { pos }
            } else {
                Command::UpdateCursor {
                    pos,
                    resource_id: u32::from_le(c.0.resource_id),
                    hot_x: u32::from_le(c.0.hot_x),
                    hot_y: u32::from_le(c.0.hot_y),
                }
            }
        }
        _ => {
            return Err(refuse(
                hdr,
                ErrorCode::Unspec,
                "unsupported command (no virgl, no blobs, no capsets)",
            ))
        }
    };
    Ok(Request { header, command })
}

/// Appends the bytes of `response` to `out`: the header (echoing the request's fence when
/// it asked for one), then the body.
pub fn encode(request: Option<&Header>, response: &Response, out: &mut Vec<u8>) {
    let mut h = CtrlHeader::default();
    h.0.type_ = response.code().to_le();
    if let Some(r) = request.filter(|r| r.flags & VIRTIO_GPU_FLAG_FENCE != 0) {
        h.0.flags = VIRTIO_GPU_FLAG_FENCE.to_le();
        h.0.fence_id = r.fence_id.to_le();
        h.0.ctx_id = r.ctx_id.to_le();
    }
    match response {
        Response::DisplayInfo { width, height } => {
            let mut d = abi::RespDisplayInfo::default();
            d.0.hdr = h.0;
            let one = &mut d.0.pmodes[0];
            one.r.width = width.to_le();
            one.r.height = height.to_le();
            one.enabled = 1u32.to_le();
            debug_assert!(VIRTIO_GPU_MAX_SCANOUTS as usize == d.0.pmodes.len());
            out.extend_from_slice(d.as_slice());
        }
        Response::Edid(blob) => {
            let mut e = abi::RespEdid::default();
            e.0.hdr = h.0;
            let n = blob.len().min(MAX_EDID_BYTES);
            e.0.size = (n as u32).to_le();
            e.0.edid[..n].copy_from_slice(&blob[..n]);
            out.extend_from_slice(e.as_slice());
        }
        Response::NoData | Response::Error(_) => out.extend_from_slice(h.as_slice()),
    }
}
