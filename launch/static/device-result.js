/* What a participant's device test found, in words for the clinician (the provider view): the structured
 * result the gateway keeps on the device_test_passed / device_test_failed event (presence/ws.py). */
import { t } from "./i18n.js";

const RTT = ["under_50ms", "50_100ms", "100_200ms", "200_400ms", "over_400ms"];

/** The device test result as one line ("Connection: relay OK, under 50 ms"), or "" when there is none. */
export function describeDeviceTest(detail) {
  if (!detail || typeof detail !== "object") return "";
  const parts = [];
  if (detail.relay === "ok") {
    parts.push(RTT.indexOf(detail.rtt) >= 0
      ? t("device.connection_ok_rtt", { rtt: t("device.rtt." + detail.rtt) }) : t("device.connection_ok"));
  } else if (detail.relay === "failed") {
    parts.push(t("device.no_relay"));
  }
  if (detail.camera === false) parts.push(t("device.no_camera"));
  if (detail.speaker === false) parts.push(t("device.speaker_not_heard"));
  return parts.join(" · ");
}
