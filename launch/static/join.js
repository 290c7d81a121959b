/* The join page: guidance for in-app browsers, whose copy-link button copies this (still unused) link. */
import { guideIfInApp } from "./patient-common.js";

guideIfInApp(() => window.location.href);
