mod time4vps_fake;
