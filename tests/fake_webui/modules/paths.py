import os
data_path = os.getcwd()
script_path = data_path
