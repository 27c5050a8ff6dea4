//! RuntimeConfig: the cgroup driver the kubelet must use (KEP-4033). Static for the life
//! of the daemon, as the kubelet queries it only once.

use cri_api::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
};

use crate::config;
use crate::error::CriResult;
use crate::service::CriService;

pub fn runtime_config(
    svc: &CriService,
    _req: RuntimeConfigRequest,
) -> CriResult<RuntimeConfigResponse> {
    let driver = match svc.config.cgroup_driver {
        config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        config::CgroupDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}
