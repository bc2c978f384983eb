include $(sort $(wildcard $(BR2_EXTERNAL_COLLECTIVE_PATH)/package/*/*.mk))
