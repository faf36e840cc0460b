dynamic_args = {"online_lora": False}
