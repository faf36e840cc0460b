class _ModelData:
    sd_model = None


model_data = _ModelData()
