//! UPDATE_FRAMEWORK: a subscribed framework changes its FrameworkInfo and suppressed roles.

use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::call;

use super::settings::{check_framework_info, Settings};
use super::{Effect, Frameworks};
use crate::error::CompatError;

impl Frameworks {
    pub(super) fn update_framework(
        &mut self,
        fw_id: &str,
        update: call::UpdateFramework,
    ) -> Result<Vec<Effect>, CompatError> {
        let mut info = update.framework_info;
        if info.id.as_ref().map(|i| i.value.as_str()) != Some(fw_id) {
            return Err(CompatError::Invalid(
                "'framework_id' differs from 'update_framework.framework_info.id'".into(),
            ));
        }
        info.id = Some(mesos::FrameworkId {
            value: fw_id.to_string(),
        });
        check_framework_info(&info)?;
        let settings = Settings::of(&self.config, &info, &update.suppressed_roles);
        settings.cap_failover_timeout(&mut info);
        if let Some(f) = self.frameworks.get_mut(fw_id) {
            f.info = info;
            settings.apply(f);
        }
        Ok(vec![Effect::Wake])
    }
}
