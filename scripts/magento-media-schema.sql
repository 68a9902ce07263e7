-- Magento 2's media storage tables (the "Database" media storage of
-- Stores > Configuration > Advanced > System > Storage Configuration for Media),
-- written from the column list in mediafs issue 4. Magento 1 has the same
-- tables as core_directory_storage / core_file_storage.
--
-- Character set and collation are Magento's defaults: utf8 (utf8mb3) with a
-- case- and accent-insensitive collation, so 'A.jpg' and 'a.jpg' clash on the
-- unique keys. SEMANTICS.md says how to switch the name columns to a binary
-- collation.

CREATE TABLE IF NOT EXISTS `media_storage_directory_storage` (
  `directory_id` int unsigned NOT NULL AUTO_INCREMENT COMMENT 'Directory ID',
  `name` varchar(100) NOT NULL COMMENT 'Directory Name',
  `path` varchar(255) DEFAULT NULL COMMENT 'Path to the Directory',
  `upload_time` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP COMMENT 'Upload Timestamp',
  `parent_id` int unsigned DEFAULT NULL COMMENT 'Parent Directory ID',
  PRIMARY KEY (`directory_id`),
  UNIQUE KEY `MEDIA_STORAGE_DIRECTORY_STORAGE_NAME_PARENT_ID` (`name`, `parent_id`),
  KEY `MEDIA_STORAGE_DIRECTORY_STORAGE_PARENT_ID` (`parent_id`),
  CONSTRAINT `MEDIA_STORAGE_DIR_STORAGE_PARENT_ID_DIR_STORAGE_DIR_ID`
    FOREIGN KEY (`parent_id`) REFERENCES `media_storage_directory_storage` (`directory_id`)
    ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci COMMENT='Directory Storage';

CREATE TABLE IF NOT EXISTS `media_storage_file_storage` (
  `file_id` int unsigned NOT NULL AUTO_INCREMENT COMMENT 'File ID',
  `content` longblob NOT NULL COMMENT 'File Content',
  `upload_time` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP COMMENT 'Upload Timestamp',
  `filename` varchar(100) NOT NULL COMMENT 'Filename',
  `directory_id` int unsigned DEFAULT NULL COMMENT 'Identifier of Directory where File is Located',
  `directory` varchar(255) DEFAULT NULL COMMENT 'Directory Path',
  PRIMARY KEY (`file_id`),
  UNIQUE KEY `MEDIA_STORAGE_FILE_STORAGE_FILENAME_DIRECTORY_ID` (`filename`, `directory_id`),
  KEY `MEDIA_STORAGE_FILE_STORAGE_DIRECTORY_ID` (`directory_id`),
  CONSTRAINT `MEDIA_STORAGE_FILE_STORAGE_DIR_ID_DIR_STORAGE_DIR_ID`
    FOREIGN KEY (`directory_id`) REFERENCES `media_storage_directory_storage` (`directory_id`)
    ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci COMMENT='File Storage';
