"""The paper's experiment grid: models x losses x policies (x protocol) per modality."""
