// The Microsoft 365 sign-in pop-up's last page: the provider view that opened it watches for it to close.
window.setTimeout(() => window.close(), 300);
