// Placeholder: this package is planned (see ARCHITECTURE.md) but not written yet.
export {};
